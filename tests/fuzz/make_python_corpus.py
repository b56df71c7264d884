#!/usr/bin/env python3
"""Writes the seeds of joblib_python_fuzzer into tests/fuzz/python_corpus.

Each seed is a selector byte (bits 0-1: mmap_mode none/r/c; bit 2: read as
.npz) and a small file Debian's joblib, pickle or numpy wrote.

    /usr/bin/python3 tests/fuzz/make_python_corpus.py
"""
import io, os, pickle, sys, tempfile, zipfile

import joblib
import numpy as np

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "python_corpus")
os.makedirs(out, exist_ok=True)
value = {
    "a": np.arange(6, dtype="<f8").reshape(2, 3), "b": np.array([True, False]), "f": np.asfortranarray(np.ones((2, 2), dtype=">i4")),
    "n": 7, "s": "x", "t": (1, 2.5, None), "l": [b"raw", 1 + 2j, {1, 2}], "big": 2**63, "np": np.float32(1.5),
}


def seed(name, selector, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([selector]) + data)


with tempfile.TemporaryDirectory() as d:
    for comp in [None, "zlib", "gzip", "bz2", "xz", "lzma", "lz4"]:
        path = os.path.join(d, "v")
        joblib.dump(value, path, compress=(comp, 3) if comp else 0)
        data = open(path, "rb").read()
        seed(f"joblib-{comp}", 0, data)
        if comp is None:
            seed("joblib-None-mmap-r", 1, data)
            seed("joblib-None-mmap-c", 2, data)
    for proto in [2, 3, 4, 5]:
        seed(f"pickle-{proto}", 0, pickle.dumps(value, protocol=proto))
    for compressed in [False, True]:
        buf = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buf, x=np.arange(4, dtype=np.int16), y=np.eye(2))
        seed(f"npz-{'deflated' if compressed else 'stored'}", 4, buf.getvalue())
print(f"{len(os.listdir(out))} seeds in {out}")
