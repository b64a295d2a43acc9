"""golden_io.py — writer and reader of the golden fixture format that tests/golden.h reads, shared by
make_fixtures.py and make_tokenizer_fixtures.py.

Layout (little-endian): b"VLMG" | u32 version 1 | u32 n_records | per record: u32 name_len | name (UTF-8) |
u32 dtype (0 f32, 1 i32, 2 u8, 3 i64) | u32 n_dims | i64 shape[n_dims] | data, row-major."""

import os
import struct

import numpy as np

GOLDEN_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.int32): 1, np.dtype(np.uint8): 2, np.dtype(np.int64): 3}


def write_golden(path, records, max_bytes=None):
    """records: list of (name, np.ndarray). Writes the file, reads it back to check it, returns its size."""
    assert len(records) <= 64, f"{path}: {len(records)} records, the reader takes 64"
    names = [n for n, _ in records]
    assert len(set(names)) == len(names), f"{path}: duplicate record names"
    out = [b"VLMG", struct.pack("<II", 1, len(records))]
    for name, arr in records:
        arr = np.ascontiguousarray(arr)
        raw = name.encode("utf-8")
        assert 0 < len(raw) < 128 and arr.dtype in GOLDEN_DTYPES and arr.ndim <= 8, (name, arr.dtype)
        out.append(struct.pack("<I", len(raw)) + raw)
        out.append(struct.pack("<II", GOLDEN_DTYPES[arr.dtype], arr.ndim))
        out.append(struct.pack(f"<{arr.ndim}q", *arr.shape))
        out.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    blob = b"".join(out)
    assert max_bytes is None or len(blob) <= max_bytes, f"{path}: {len(blob)} bytes, over {max_bytes}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
    back = read_golden(path)
    assert list(back) == names and all(np.array_equal(back[n], a) for n, a in records)
    return len(blob)


def read_golden(path):
    """Inverse of write_golden: {name: array}."""
    with open(path, "rb") as f:
        buf = f.read()
    assert buf[:4] == b"VLMG"
    version, n = struct.unpack_from("<II", buf, 4)
    assert version == 1
    off, out = 12, {}
    inv = {v: k for k, v in GOLDEN_DTYPES.items()}
    for _ in range(n):
        (name_len,) = struct.unpack_from("<I", buf, off)
        name = buf[off + 4: off + 4 + name_len].decode()
        off += 4 + name_len
        dtype, n_dims = struct.unpack_from("<II", buf, off)
        shape = struct.unpack_from(f"<{n_dims}q", buf, off + 8)
        off += 8 + 8 * n_dims
        dt = inv[dtype]
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(buf, dt, count, off).reshape(shape)
        off += count * dt.itemsize
    assert off == len(buf)
    return out
