"""Helpers that let numba vectorize the codec loops without changing a single float operation.

* ``inline``: a jit decorator that inlines at numba-IR level. A call per 32-value block costs more than
  the block's work, and inlined, LLVM sees that block offsets are non-negative, so the loops vectorize.
* ``opaque(n)``: hides a constant trip count from the optimizer, so a 16/32-iteration loop stays a loop
  that the loop vectorizer handles instead of being unrolled into scalar code (numba disables SLP).
* ``nint32``: ggml's ``nearest_int`` bit trick kept in int32 (numba widens to int64, which does not
  vectorize on AVX2).
* ``block_absmax``: ggml's first-index, strictly-greater signed max-|x| scan, in one vectorized pass.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from edgequant.kernels.primitives import F, f32_as_i32, i32_as_f32

inline = njit(cache=True, nogil=True, fastmath=False, error_model="numpy", inline="always")
"""Small block helpers are inlined at numba-IR level: a call per block costs more than the block's work,
and inside the caller LLVM sees that block offsets are non-negative, so the loops vectorize."""

ABS_MASK = _ABS = np.int32(0x7FFFFFFF)  # float32 bits without the sign
INF_BITS = _INF = np.int32(0x7F800000)  # float32 bits of +inf


@intrinsic
def opaque(typingctx, v):
    """Return the integer ``v`` unchanged but hidden from the optimizer (an empty inline asm).

    numba disables LLVM's SLP vectorizer, and a loop with a constant trip count of 16 or 32 is fully
    unrolled into scalar code before the loop vectorizer sees it. Loops over ``opaque(32)`` stay loops
    and get vectorized.
    """
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.args[0])
        return builder.call(ir.InlineAsm(ir.FunctionType(ty, [ty]), "", "=r,0"), [args[0]])

    return v(v), codegen


@inline
def nint32(v):
    """``nearest_int`` (the exact ggml bit trick, wrap-around included) kept in int32 so it vectorizes."""
    return np.int32(np.int32(f32_as_i32(F(v + F(12582912.0))) & np.int32(0x7FFFFF)) - np.int32(0x400000))


@inline
def block_absmax(xr, xi, s, B):
    """(amax, m, finite) of the block at s: ggml's first-index, strictly-greater scan (§2.7).

    One vectorized pass takes the largest magnitude among positive and among negative elements; only a
    tie between +a and -a, or an inf/NaN in the block (``finite`` False), needs the literal scan.
    """
    mp = np.int32(0)
    mq = np.int32(0)
    for j in range(B):
        b = xi[s + j]
        a = np.int32(b & _ABS)
        mp = np.int32(max(mp, a if b >= 0 else np.int32(0)))
        mq = np.int32(max(mq, np.int32(0) if b >= 0 else a))
    finite = mp < _INF and mq < _INF
    if finite:
        if mp > mq:
            v = i32_as_f32(np.int32(mp))
            return v, v, True
        if mq > mp:
            v = i32_as_f32(np.int32(mq))
            return v, -v, True
        if mp == 0:
            return F(0.0), F(0.0), True
    amax = F(0.0)
    m = F(0.0)
    for j in range(B):
        ax = abs(xr[s + j])
        if ax > amax:
            amax = ax
            m = xr[s + j]
    return amax, m, finite
