"""Q2_K and Q3_K row kernels, byte-exact with llama.cpp's ``quantize_q2_K`` / ``quantize_q3_K``.

Without an importance vector the ``quantize_row_q*_K_ref`` algorithms run; with one the ``*_impl``
algorithms (``shared/reference/ggml-quants.md`` §4.7, §4.8, §5). Every float is float32 and every
sum sequential (§2.1); integer stores wrap to uint8/int8 exactly where the C code stores into them.

Block layouts (256 weights, little-endian):

* Q2_K, 84 bytes: ``scales[16]`` @0 (low nibble = 4-bit scale, high nibble = 4-bit min of sub-block
  j), ``qs[64]`` @16 (2-bit codes, byte ``32*(i//128) + i%32`` bits ``2*((i%128)//32)``),
  ``d`` fp16 @80, ``dmin`` fp16 @82. ``y = (d*sc)*q - dmin*mn``.
* Q3_K, 110 bytes: ``hmask[32]`` @0 (bit ``i//32`` of byte ``i%32`` = code >= 4), ``qs[64]`` @32
  (low 2 bits, Q2_K plane layout), ``scales[12]`` @96 (sixteen 6-bit ``u``: low nibbles in bytes 0..7,
  j < 8 low / j >= 8 high; top 2 bits of ``u_j`` at bits ``2*(j//4)`` of byte ``8 + j%4``), ``d`` fp16
  @108. ``y = (d*(u-32)) * (q2 - (0 if hbit else 4))``.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import (
    GROUP_MAX_EPS,
    F,
    get_fp16,
    jit,
    make_q3_quants,
    make_qkx,
    make_qx_quants,
    nearest_int,
    put_fp16,
)

QK_K = 256


@jit
def qp_quants_u8(n, nmax, x, qw, L):
    """``make_qp_quants`` with C's ``uint8_t L[]`` semantics (§3.4).

    Codes are stored into a uint8 array in the C code, so a negative candidate (reachable only when a
    sub-block scale comes out negative) wraps to 256+l and the wrapped value is what later reads see.
    This mirrors that exactly; for non-negative inputs it equals ``primitives.make_qp_quants``.
    """
    fnmax = F(nmax)
    mx = F(0.0)
    for i in range(n):
        xi = x[i]
        mx = mx if mx > xi else xi  # C's MAX(a, b) = a > b ? a : b
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F(0.0)
    iscale = F(fnmax / mx)
    for i in range(n):
        L[i] = nearest_int(F(iscale * x[i])) & 0xFF
    scale = F(F(1.0) / iscale)
    best = F(0.0)
    for i in range(n):
        diff = F(x[i] - F(scale * F(L[i])))
        best = F(best + F(F(qw[i] * diff) * diff))
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = F(F(F(F(0.1) * F(step)) + fnmax) / mx)
        scale_is = F(F(1.0) / iscale_is)
        mse = F(0.0)
        for i in range(n):
            l = min(nmax, nearest_int(F(iscale_is * x[i])))
            diff = F(x[i] - F(scale_is * F(l)))
            mse = F(mse + F(F(qw[i] * diff) * diff))
        if mse < best:
            best = mse
            iscale = iscale_is
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        l = min(nmax, nearest_int(F(iscale * x[i])))
        L[i] = l & 0xFF
        fl = F(l)
        sumlx = F(sumlx + F(F(qw[i] * x[i]) * fl))
        suml2 = F(suml2 + F(F(qw[i] * fl) * fl))
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            fli = F(L[i])
            slx = F(sumlx - F(F(w * x[i]) * fli))
            sl2 = F(suml2 - F(F(w * fli) * fli))
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(F(F(x[i] * sl2) / slx)))
                if new_l != L[i]:
                    fn = F(new_l)
                    slx = F(slx + F(F(w * x[i]) * fn))
                    sl2 = F(sl2 + F(F(w * fn) * fn))
                    if F(F(slx * slx) * suml2) > F(F(sumlx * sumlx) * sl2):
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return F(sumlx / suml2) if suml2 > 0 else F(0.0)


@jit
def pack_2bit_planes(L, out, off):
    """§3.7: 256 codes (0..3) into 64 bytes at ``out[off:]``."""
    for h in range(2):
        b = 128 * h
        for l in range(32):
            out[off + 32 * h + l] = np.uint8(
                L[b + l] | (L[b + l + 32] << 2) | (L[b + l + 64] << 4) | (L[b + l + 96] << 6)
            )


# --- Q2_K -------------------------------------------------------------------------------------------


@jit
def _q2_k_requant_pack(xr, base, o, L, sc, d, dmin):
    for j in range(16):
        dd = F(d * F(sc[j] & 0xF))
        if dd == 0:
            continue
        mm = F(dmin * F(sc[j] >> 4))
        for ii in range(16):
            l = nearest_int(F(F(xr[base + 16 * j + ii] + mm) / dd))
            L[16 * j + ii] = max(0, min(3, l))
    return 0


@jit
def quantize_q2_k(x, qw, out):
    rows, n = x.shape
    nb = n // QK_K
    use_qw = qw.shape[0] > 0
    L = np.zeros(QK_K, np.int32)
    Laux = np.zeros(16, np.int32)
    w = np.zeros(16, np.float32)
    scales = np.zeros(16, np.float32)
    mins = np.zeros(16, np.float32)
    sw = np.zeros(16, np.float32)
    Ls = np.zeros(16, np.int32)
    Lm = np.zeros(16, np.int32)
    sc = np.zeros(16, np.int32)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            base = b * QK_K
            o = b * 84
            if not use_qw:
                max_scale = F(0.0)
                max_min = F(0.0)
                for j in range(16):
                    for l in range(16):
                        w[l] = abs(xr[base + 16 * j + l])
                    s, m = make_qkx(16, 3, xr, base + 16 * j, w, 0, L, 16 * j, Laux, F(-0.5), F(0.1), 15, True)
                    scales[j] = s
                    mins[j] = m
                    if s > max_scale:
                        max_scale = s
                    if m > max_min:
                        max_min = m
                if max_scale > 0:
                    iscale = F(F(15.0) / max_scale)
                    for j in range(16):
                        sc[j] = nearest_int(F(iscale * scales[j])) & 0xFF
                    d = put_fp16(orow, o + 80, F(max_scale / F(15.0)))
                else:
                    for j in range(16):
                        sc[j] = 0
                    d = put_fp16(orow, o + 80, F(0.0))
                if max_min > 0:
                    iscale = F(F(15.0) / max_min)
                    for j in range(16):
                        sc[j] = (sc[j] | (nearest_int(F(iscale * mins[j])) << 4)) & 0xFF
                    dmin = put_fp16(orow, o + 82, F(max_min / F(15.0)))
                else:
                    dmin = put_fp16(orow, o + 82, F(0.0))
            else:
                sumx2 = F(0.0)
                for i in range(QK_K):
                    xi = xr[base + i]
                    sumx2 = F(sumx2 + F(xi * xi))
                sigma2 = F(sumx2 / F(256.0))
                for j in range(16):
                    s = F(0.0)
                    for l in range(16):
                        xi = xr[base + 16 * j + l]
                        wl = F(qw[base + 16 * j + l] * np.sqrt(F(sigma2 + F(xi * xi))))
                        w[l] = wl
                        s = F(s + wl)
                    sw[j] = s
                    sj, mj = make_qkx(16, 3, xr, base + 16 * j, w, 0, L, 16 * j, Laux, F(-0.9), F(0.05), 36, False)
                    scales[j] = sj
                    mins[j] = mj
                dm = qp_quants_u8(16, 15, scales, sw, Ls)
                mm = qp_quants_u8(16, 15, mins, sw, Lm)
                d = put_fp16(orow, o + 80, dm)
                dmin = put_fp16(orow, o + 82, mm)
                for j in range(16):
                    sc[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
            for j in range(16):
                orow[o + j] = np.uint8(sc[j])
            _q2_k_requant_pack(xr, base, o, L, sc, d, dmin)
            pack_2bit_planes(L, orow, o + 16)


@jit
def dequantize_q2_k(data, out):
    rows, n = out.shape
    nb = n // QK_K
    for r in range(rows):
        src = data[r]
        y = out[r]
        for b in range(nb):
            o = b * 84
            d = get_fp16(src, o + 80)
            dmin = get_fp16(src, o + 82)
            for i in range(QK_K):
                j = i // 16
                sc = np.int32(src[o + j])
                dl = F(d * F(sc & 0xF))
                ml = F(dmin * F(sc >> 4))
                q = (np.int32(src[o + 16 + 32 * (i // 128) + (i % 32)]) >> (2 * ((i % 128) // 32))) & 3
                y[b * QK_K + i] = F(F(dl * F(q)) - ml)


# --- Q3_K -------------------------------------------------------------------------------------------


@jit
def quantize_q3_k(x, qw, out):
    rows, n = x.shape
    nb = n // QK_K
    use_qw = qw.shape[0] > 0
    L = np.zeros(QK_K, np.int32)
    w = np.zeros(16, np.float32)
    scales = np.zeros(16, np.float32)
    sw = np.zeros(16, np.float32)
    Ls = np.zeros(16, np.int32)
    u = np.zeros(16, np.int32)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            base = b * QK_K
            o = b * 110
            if not use_qw:
                amax = F(0.0)
                max_scale = F(0.0)
                for j in range(16):
                    s = make_q3_quants(xr, base + 16 * j, L, 16 * j)
                    scales[j] = s
                    a = abs(s)
                    if a > amax:
                        amax = a
                        max_scale = s
                if max_scale != 0:
                    iscale = F(F(-32.0) / max_scale)
                    for j in range(16):
                        l = ((nearest_int(F(iscale * scales[j])) + 128) & 0xFF) - 128  # int8_t store
                        u[j] = max(-32, min(31, l)) + 32
                    d = put_fp16(orow, o + 108, F(F(1.0) / iscale))
                else:
                    for j in range(16):
                        u[j] = 0
                    d = put_fp16(orow, o + 108, F(0.0))
            else:
                sumx2 = F(0.0)
                for i in range(QK_K):
                    xi = xr[base + i]
                    sumx2 = F(sumx2 + F(xi * xi))
                sigma2 = F(F(F(2.0) * sumx2) / F(256.0))
                for j in range(16):
                    for l in range(16):
                        xi = xr[base + 16 * j + l]
                        w[l] = F(qw[base + 16 * j + l] * np.sqrt(F(sigma2 + F(xi * xi))))
                    s = F(0.0)
                    for l in range(16):
                        s = F(s + w[l])
                    sw[j] = s
                    scales[j] = make_qx_quants(16, 4, xr, base + 16 * j, w, 0, L, 16 * j)
                d_block = make_qx_quants(16, 32, scales, 0, sw, 0, Ls, 0)
                for j in range(16):
                    u[j] = Ls[j]
                d = put_fp16(orow, o + 108, d_block)
            # scales[12] @96
            for k in range(12):
                orow[o + 96 + k] = 0
            for j in range(16):
                uj = u[j]
                if j < 8:
                    orow[o + 96 + j] = np.uint8(uj & 0xF)
                else:
                    orow[o + 96 + j - 8] |= np.uint8((uj & 0xF) << 4)
                orow[o + 96 + 8 + j % 4] |= np.uint8((uj >> 4) << (2 * (j // 4)))
            # re-quantize with the stored scales
            for j in range(16):
                dd = F(d * F(u[j] - 32))
                if dd == 0:
                    continue
                for ii in range(16):
                    l = nearest_int(F(xr[base + 16 * j + ii] / dd))
                    L[16 * j + ii] = max(-4, min(3, l)) + 4
            for k in range(32):
                orow[o + k] = 0
            for i in range(QK_K):
                if L[i] > 3:
                    orow[o + (i % 32)] |= np.uint8(1 << (i // 32))
                    L[i] -= 4
            pack_2bit_planes(L, orow, o + 32)


@jit
def dequantize_q3_k(data, out):
    rows, n = out.shape
    nb = n // QK_K
    for r in range(rows):
        src = data[r]
        y = out[r]
        for b in range(nb):
            o = b * 110
            d = get_fp16(src, o + 108)
            for j in range(16):
                lo = (np.int32(src[o + 96 + j]) & 15) if j < 8 else (np.int32(src[o + 96 + j - 8]) >> 4)
                hi = (np.int32(src[o + 96 + 8 + j % 4]) >> (2 * (j // 4))) & 3
                dl = F(d * F((lo | (hi << 4)) - 32))
                for ii in range(16):
                    i = 16 * j + ii
                    q = (np.int32(src[o + 32 + 32 * (i // 128) + (i % 32)]) >> (2 * ((i % 128) // 32))) & 3
                    hb = (np.int32(src[o + (i % 32)]) >> (i // 32)) & 1
                    c = q - (0 if hb else 4)
                    y[b * QK_K + i] = F(dl * F(c))
