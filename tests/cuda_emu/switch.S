/* switch.S — the emulator's context switch (tests/cuda_emu/emu.cpp), x86-64 System V.
 *
 * void emu_switch(void **save_sp, void *new_sp)
 *
 * Pushes the callee-saved registers on the current stack, stores the stack pointer in *save_sp, loads new_sp, pops
 * the callee-saved registers saved there and returns into that context. Everything else is caller-saved by the ABI,
 * so a C++ caller sees an ordinary function call. A fresh context is a stack holding six register slots followed by
 * the address of its first function (emu.cpp, thread_init). */
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
    .section .note.GNU-stack, "", @progbits
