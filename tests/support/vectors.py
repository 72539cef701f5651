"""Deterministic test inputs of ``shared/reference/ggml-quants.md`` §9.1 (SINE, LCG, IMAT) and a SHA helper.

Each generator computes in float64 with Python's ``math`` and rounds once to float32, exactly as the
spec's test vectors were produced.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

__all__ = ["INPUT_SHA256", "imat", "lcg", "sha256", "sine"]


def sine(n: int) -> np.ndarray:
    """SINE(n)[i] = f32(sin(i*0.37)*0.1)."""
    return np.array([math.sin(i * 0.37) * 0.1 for i in range(n)], dtype=np.float64).astype(np.float32)


def lcg(n: int) -> np.ndarray:
    """LCG(n): s <- (1103515245*s + 12345) mod 2^31 from s=12345; x = (s/2^31 - 0.5) * (1.6 | 0.2)."""
    s = 12345
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        s = (1103515245 * s + 12345) % (1 << 31)
        u = s / float(1 << 31)
        out[i] = (u - 0.5) * (1.6 if i % 37 == 0 else 0.2)
    return out.astype(np.float32)


def imat(n: int) -> np.ndarray:
    """IMAT(n)[j] = f32(0.25*(1 + (7*j) % 13)), values 0.25 .. 3.25 (exact)."""
    return np.array([0.25 * (1 + (7 * j) % 13) for j in range(n)], dtype=np.float64).astype(np.float32)


def sha256(a) -> str:
    """SHA-256 hex digest of an array's little-endian bytes (C order) or of a bytes object."""
    if isinstance(a, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(a)).hexdigest()
    arr = np.ascontiguousarray(a)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return hashlib.sha256(arr.tobytes()).hexdigest()


# §9.1: SHA-256 of the float32 inputs.
INPUT_SHA256 = {
    ("sine", 32): "974b6b75ac00cdcb3e1a76fef81e2ee75ac22594ff8d0dc2c88b0138ff981cf3",
    ("sine", 256): "7bbb9dd5c3cbd8c391857bf58fc1daafd57fa6139c207e01e7c5992998dc0a68",
    ("lcg", 64): "f601020e48ff231eb101f01b52ef5c2d6e4d46319f36fc84ba6a78f4e911507e",
    ("lcg", 512): "a02ef8c5301e69c4a47937ccbf105404367f6fd46017470e50ba1c68c13b95b6",
    ("lcg", 4096): "f7e6191bab0a6fb05b604b6216495cd3e4ed71060936094cef019bcaf165510a",
    ("imat", 64): "c748d4ee7c393251977746ada577c7336fe265be383c0cc5bb056f67685ee577",
    ("imat", 512): "6dfa82a4b6cc457d9cabd168a65521aec6cdb35680083b361ba389e9d9b70d06",
    ("imat", 1024): "b19906b9e1825a0cc284f7348f76ff87bb8a1994b11a39b4e05c3a4a2b3a5fa1",
}
