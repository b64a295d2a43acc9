/* fuzz_common.h — helpers shared by the libFuzzer targets: the parsers under test take file paths, so the
 * input is handed over through an anonymous in-memory file (memfd) and its /proc/self/fd path. */
#ifndef VLM_FUZZ_COMMON_H
#define VLM_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* Writes data to a fresh memfd; fills path; returns the fd (close it when done) or -1. */
static int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t cap) {
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
