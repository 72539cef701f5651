"""Numba scalar primitives shared by every ggml codec: bit casts, fp16, rounding rules, scale searches.

Numerics contract (see ``shared/reference/ggml-quants.md`` §2): every value is IEEE binary32 and every
``+ - * / sqrt`` is rounded to binary32 at once, left to right as the C code writes it, with no fused
multiply-add. In numba that means: every variable is ``np.float32``, every literal is wrapped in
``F(...)``, every integer meeting a float is converted with ``F(i)`` first (numba would otherwise
promote to float64 and round differently), and ``fastmath`` stays off. Sums are sequential loops,
never ``np.sum`` (pairwise summation flips last bits).

The scalar searches ``make_qx_quants`` and ``make_qkx`` (llama.cpp's ``make_qx_quants`` and
``make_qkx2/3_quants``) and ``best_index`` are the one-block-at-a-time reference forms. The codecs run
lane-parallel versions of them (``kquants_search``, ``legacy_search``, ``iq4``) that do the same float32
operations for 16 or 32 blocks at once; the unit tests check those against these.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

F = np.float32
GROUP_MAX_EPS = F(1e-15)

_JIT = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


def jit(fn):
    """The one decorator for edgequant kernels: cached, GIL-free, exact IEEE arithmetic."""
    return njit(**_JIT)(fn)


# --- bit casts --------------------------------------------------------------------------------------


@intrinsic
def f32_as_i32(typingctx, x):
    """Reinterpret a float32's bits as an int32 (C's memcpy type pun)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def i32_as_f32(typingctx, x):
    """Reinterpret an int32's bits as a float32."""
    if x != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# --- rounding rules ---------------------------------------------------------------------------------


@jit
def nearest_int(v):
    """ggml's ``nearest_int``: add 1.5*2^23 in float32 and read the low mantissa bits.

    Round half to even for |v| <= 4194303; outside that range it returns the same wrapped value as the
    C bit trick (reachable only through refinement divisions by tiny denominators), so bytes still match.
    """
    t = F(v + F(12582912.0))
    return (np.int32(f32_as_i32(t)) & 0x007FFFFF) - 0x00400000


@jit
def roundf_away(v):
    """C ``roundf``: round half away from zero (Q8_0, Q8_1)."""
    a = abs(v)
    r = np.floor(a)
    if a - r >= F(0.5):
        r = r + F(1.0)
    return -r if v < 0 else r


@jit
def cvt_i32(t):
    """C float->int32 as x86 does it: truncate toward zero; NaN or out of range -> INT_MIN (``cvttss2si``)."""
    if t >= F(-2147483648.0) and t < F(2147483648.0):
        return np.int64(np.int32(t))
    return np.int64(-2147483648)


@jit
def wrap_i8(c):
    """Wrap an integer to int8 (C conversion to int8_t)."""
    return ((c + 128) & 0xFF) - 128


# --- fp16 / bf16 -------------------------------------------------------------------------------------


@jit
def fp32_to_fp16_bits(f):
    """IEEE fp32 -> fp16 bits, round to nearest even, subnormals exact, overflow -> inf.

    NaN becomes 0x7E00 with the sign kept, as ggml's software conversion does. The method scales the
    magnitude so the hardware float add performs the rounding (the classic FP16 library technique).
    """
    f = F(f)
    w = np.int64(f32_as_i32(f)) & 0xFFFFFFFF
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    base = F(F(abs(f) * F(5.192296858534828e33)) * F(7.703719777548943e-34))  # 2^112, 2^-110
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = 0x71000000
    base = F(i32_as_f32(np.int32((bias >> 1) + 0x07800000)) + base)
    bits = np.int64(f32_as_i32(base)) & 0xFFFFFFFF
    exp_bits = (bits >> 13) & 0x00007C00
    mantissa_bits = bits & 0x00000FFF
    nonsign = exp_bits + mantissa_bits
    if shl1_w > 0xFF000000:
        nonsign = 0x7E00
    return np.uint16((sign >> 16) | nonsign)


@jit
def fp16_bits_to_fp32(h):
    """fp16 bits -> fp32, exact (subnormals, inf and NaN payloads included)."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        v = F(F(mant) * F(5.960464477539063e-08))  # mant * 2^-24, exact
        return -v if sign else v
    if exp == 31:  # inf, or NaN made quiet (bit 22 set) as ggml's conversion does
        bits = sign | 0x7F800000 | (mant << 13) | (0x00400000 if mant else 0)
    else:
        bits = sign | ((exp + 112) << 23) | (mant << 13)
    return i32_as_f32(np.int32(bits))


@jit
def fp32_to_bf16_bits(f):
    """fp32 -> bf16 bits: round to nearest even on the upper half; NaN -> quiet NaN (ggml rule)."""
    u = np.int64(f32_as_i32(F(f))) & 0xFFFFFFFF
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 64)
    return np.uint16(((u + (0x7FFF + ((u >> 16) & 1))) >> 16) & 0xFFFF)


# --- little-endian stores into a uint8 row --------------------------------------------------------------


@jit
def put_u16(out, off, v):
    out[off] = np.uint8(v & 0xFF)
    out[off + 1] = np.uint8((v >> 8) & 0xFF)


@jit
def get_u16(buf, off):
    return np.int64(buf[off]) | (np.int64(buf[off + 1]) << 8)


@jit
def put_fp16(out, off, f):
    """Store fp16(f) at ``out[off:off+2]`` and return the float32 value it decodes to."""
    h = fp32_to_fp16_bits(f)
    put_u16(out, off, np.int64(h))
    return fp16_bits_to_fp32(h)


@jit
def get_fp16(buf, off):
    return fp16_bits_to_fp32(get_u16(buf, off))


# --- helpers on blocks --------------------------------------------------------------------------------


@jit
def signed_absmax(x, start, n):
    """(amax, m): the largest |x| and the signed element that has it; first index wins ties (§2.7)."""
    amax = F(0.0)
    m = F(0.0)
    for i in range(start, start + n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            m = x[i]
    return amax, m


@jit
def _qx_codes(n, nmax, x, xs, iscale, L, ls):
    """``L[ls+i] = clamp(nearest_int(iscale * x[xs+i]), -nmax, nmax-1) + nmax``."""
    for i in range(n):
        L[ls + i] = max(-nmax, min(nmax - 1, nearest_int(F(iscale * x[xs + i])))) + nmax


@jit
def _qx_sums(n, nmax, x, xs, w, ws, iscale):
    """(sum (w*x)*l, sum (w*l)*l), sequential, for the codes l of ``iscale`` (w = x*x where ``ws < 0``)."""
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        xi = x[xs + i]
        l = max(-nmax, min(nmax - 1, nearest_int(F(iscale * xi))))
        wi = w[ws + i] if ws >= 0 else F(xi * xi)
        fl = F(l)
        sumlx = F(sumlx + F(F(wi * xi) * fl))
        suml2 = F(suml2 + F(F(wi * fl) * fl))
    return sumlx, suml2


@jit
def make_qx_quants(n, nmax, x, xs, w, ws, L, ls):
    """Symmetric weighted scale search (rmse_type 1); codes 0..2*nmax-1 into ``L[ls:ls+n]``.

    ``w`` supplies the weights from offset ``ws``; pass ``ws < 0`` to use w_i = x_i*x_i.
    Returns the float32 scale; dequantized value is scale*(L - nmax).
    """
    amax, m = signed_absmax(x, xs, n)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[ls + i] = 0
        return F(0.0)
    fnmax = F(nmax)
    iscale = F(F(-fnmax) / m)
    _qx_codes(n, nmax, x, xs, iscale, L, ls)
    sumlx, suml2 = _qx_sums(n, nmax, x, xs, w, ws, iscale)
    scale = F(sumlx / suml2) if suml2 != 0 else F(0.0)
    best = F(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        t = F(F(0.1) * F(step))
        iscale = F(F(-F(fnmax + t)) / m)
        sumlx, suml2 = _qx_sums(n, nmax, x, xs, w, ws, iscale)
        if suml2 > 0 and F(sumlx * sumlx) > F(best * suml2):
            _qx_codes(n, nmax, x, xs, iscale, L, ls)
            scale = F(sumlx / suml2)
            best = F(scale * sumlx)
    return scale


@jit
def make_qkx(n, nmax, x, xs, w, ws, L, ls, Laux, rmin, rdelta, nstep, use_mad):
    """Asymmetric weighted scale+min search (``make_qkx2/3_quants``); returns (scale, the_min >= 0).

    Reconstruction is scale*L - the_min. When a grid candidate wins, its fitted min replaces ``mn`` for
    every later grid point (the gotcha of §3.3). ``Laux`` is scratch space of at least ``n`` ints.
    """
    fnmax = F(nmax)
    mn = x[xs]
    mx = x[xs]
    sum_w = w[ws]
    sum_x = F(sum_w * x[xs])
    for i in range(1, n):
        xi = x[xs + i]
        if xi < mn:
            mn = xi
        if xi > mx:
            mx = xi
        wi = w[ws + i]
        sum_w = F(sum_w + wi)
        sum_x = F(sum_x + F(wi * xi))
    if mn > 0:
        mn = F(0.0)
    if mx == mn:
        for i in range(n):
            L[ls + i] = 0
        return F(0.0), F(-mn)
    iscale = F(fnmax / F(mx - mn))
    scale = F(F(1.0) / iscale)
    best = F(0.0)
    for i in range(n):
        xi = x[xs + i]
        l = max(0, min(nmax, nearest_int(F(iscale * F(xi - mn)))))
        L[ls + i] = l
        diff = F(F(F(scale * F(l)) + mn) - xi)
        err = abs(diff) if use_mad else F(diff * diff)
        best = F(best + F(w[ws + i] * err))
    for step in range(nstep + 1):
        iscale = F(F(F(rmin + F(rdelta * F(step))) + fnmax) / F(mx - mn))
        sum_l = F(0.0)
        sum_l2 = F(0.0)
        sum_xl = F(0.0)
        for i in range(n):
            xi = x[xs + i]
            l = max(0, min(nmax, nearest_int(F(iscale * F(xi - mn)))))
            Laux[i] = l
            wi = w[ws + i]
            fl = F(l)
            wl = F(wi * fl)
            sum_l = F(sum_l + wl)
            sum_l2 = F(sum_l2 + F(wl * fl))
            sum_xl = F(sum_xl + F(wl * xi))
        D = F(F(sum_w * sum_l2) - F(sum_l * sum_l))
        if D > 0:
            this_scale = F(F(F(sum_w * sum_xl) - F(sum_x * sum_l)) / D)
            this_min = F(F(F(sum_l2 * sum_x) - F(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = F(0.0)
                this_scale = F(sum_xl / sum_l2)
            cur = F(0.0)
            for i in range(n):
                diff = F(F(F(this_scale * F(Laux[i])) + this_min) - x[xs + i])
                err = abs(diff) if use_mad else F(diff * diff)
                cur = F(cur + F(w[ws + i] * err))
            if cur < best:
                for i in range(n):
                    L[ls + i] = Laux[i]
                best = cur
                scale = this_scale
                mn = this_min
    return scale, F(-mn)


@jit
def best_index(values, v):
    """Index of the nearest entry of the sorted 16-entry table ``values`` (float32); exact tie -> upper."""
    if v <= values[0]:
        return 0
    if v >= values[15]:
        return 15
    lo = 0
    hi = 15
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if v < values[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if F(v - values[hi - 1]) < F(values[hi] - v) else hi
