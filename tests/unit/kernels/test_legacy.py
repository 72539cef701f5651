"""Legacy codecs (Q4_0 ... Q8_1) against the test vectors of ggml-quants.md §9 (produced by ggml itself)."""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.kernels import legacy
from tests.support.vectors import INPUT_SHA256, imat, lcg, sha256, sine

BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q8_1": 36}

# §9.2 V1: SINE(32), no imatrix
V1 = {
    "Q4_0": "61a2b885533110000224477aacceeffffffd",
    "Q4_1": "cc225fae578aaddeeffffddbb996643110000112",
    "Q5_0": "619e01fe03fc600aa552200113388dd3399ddffffeeb",
    "Q5_1": "941e5faefe01fe03af055aaddffeecc8822dc77330000225",
    "Q8_0": "6d12002e56727f7b664317e8bc9a85818eabd3012f57737f7a654216e7bc9985818f",
    "Q8_1": "6d127a2e002e56727f7b664317e8bc9a85818eabd3012f57737f7a654216e7bc9985818f",
}

# §9.3 V2: LCG(64) row, (imatrix?) -> (first block hex, row SHA-256)
V2 = {
    ("Q4_0", False): (
        "f2a76089877ba87877599a89766aa9b766b5",
        "7e08c9d614f906692c24f82b099a8684ac9fc092a0a45b8449774b4ad7d8c0b2",
    ),
    ("Q4_0", True): (
        "c0a76089877ba87877599a89766aa9b766b5",
        "4c0fd9ff39f6241b5fe762929c2885cd4445fb81a73b3a562b923975994bd4de",
    ),
    ("Q4_1", False): (
        "e42533ae7f435651246465833243676112057708",
        "01563b0bdb470c90cf53646f5db196d843a48169f73d216df155113fd037e4aa",
    ),
    ("Q4_1", True): (
        "d025faad7f424651246465833243676112057708",
        "efbbb03f9a2f3aa25fcf7c3cceee05aaf8054a32fdde18a4ffdd9f554f7117a6",
    ),
    ("Q5_0", False): (
        "f2a3ba1b12b3c003fee530d0dfa22312dcd4436ecc6a",
        "2cc3168add4695b9858f34fb5964f3dc8f10d2530c27d810f93fc638aa6f6741",
    ),
    ("Q5_0", True): (
        "eca3ba1b12b3c003fee530d0dfa22312dcd4436ecc6a",
        "1840623d286a9f999ada51ab3b1dd2b63120cecc4a735a3391a1ec98dd56f119",
    ),
    ("Q5_1", False): (
        "b32133ae01808000ef859cb249c9db166486cfd3350bee01",
        "99fb1f061d48515f5643827fd1aeafdbe090fa41f6b0e49ffc4bdffbe2d49aa2",
    ),
    ("Q5_1", True): (
        "ad21faad01808000ef859cb149c8ca165476ced3350bee01",
        "63b8a0a62e6c4f80d93ebe6518aea8b357d2ade3594da1619e4522978b241f5a",
    ),
    ("Q8_0", False): (
        "01187fec12d802ff0af3e7f321dfeb0f1e321ffc040de6151631effa1519dfce1dd1",
        "def4a027345f23c5e7c6d4747197563cd958a5f1e0db7d044f0e39d6e9be4844",
    ),
    ("Q8_0", True): (
        "01187fec12d802ff0af3e7f321dfeb0f1e321ffc040de6151631effa1519dfce1dd1",
        "def4a027345f23c5e7c6d4747197563cd958a5f1e0db7d044f0e39d6e9be4844",
    ),
    ("Q8_1", False): (
        "0118b9347fec12d802ff0af3e7f321dfeb0f1e321ffc040de6151631effa1519dfce1dd1",
        "6d05db1fbc6e50ed7dbaddd3eededa2b9b7d35377cb65b85a56505b2b0dbfbd4",
    ),
}

# §9.4 V3: LCG(4096) as 4x1024 -> (quantized, quantized with IMAT(1024), dequantized no-imatrix result)
V3 = {
    "Q4_0": (
        "43a3e9f88f1083bc675ef94df7ec5c6d9a0b654b7f787dc8599d1605a4e97157",
        "d90d18cd4d91e557b880d93bd03685dce28acfd2f60845b158afff3ce112d413",
        "c900ef2ccf91ea3e91595aa98a7588b213c11b44d2895f43290c4b89b992b456",
    ),
    "Q4_1": (
        "cab6a8197b5ea81eecdd40dacc62116e5646b65e9967fa3a728aff5a47589af1",
        "d96d1f0a7678192e5d0a710fa7c220c0c415146b4a51eb14f9cb8208088f92ed",
        "8334067d6dbde11c290b02ed45a64e4e4a6f1f9999843d4d2a4f499aa044c5bd",
    ),
    "Q5_0": (
        "b6c0ff26ad57981d8ccac8a84f4fc95e3bf017828501787fea62b3ef9caba96f",
        "d8052b266b1029c8f429c91619f429dbc34ada24818eed53c646cacbcdfef78e",
        "ecb2f629814c70239e374caeb593a782c057c0d7d6d8e58a9222cfd02865ffff",
    ),
    "Q5_1": (
        "1a8476aba52ea88b6011c7373cc9c1f80c5df6d5cc8b445625b600fd587a494f",
        "9375bcb5a55f15fa147dd5a33fc9cf3c55a797ffb26468042671d3c345f9d833",
        "4fc37f9d16ec06620301744839e12379e178d9c8d01402f32a12a527e08a7975",
    ),
    "Q8_0": (
        "729ede6d4bdff72f48a5a93b2e9a0238ec9c5e60f88dca7089b8321f683d8dc8",
        "729ede6d4bdff72f48a5a93b2e9a0238ec9c5e60f88dca7089b8321f683d8dc8",
        "79cd1d8c6a5bc9d03bea34b7bd3fcac8f136d94f886d86fb3205161e81e9e1b8",
    ),
    "Q8_1": ("bf6960143657d0ad952e9396b10fa438acbf378f7d7a07517960d0fe208191f2", None, None),
}

# §9.5: first block of an all-zero row
ZERO = {
    "Q4_0": "0080" + "88" * 16,
    "Q4_1": "00" * 20,
    "Q5_0": "0080" + "ffffffff" + "00" * 16,
    "Q5_1": "00" * 24,
    "Q8_0": "00" * 34,
    "Q8_1": "00" * 36,
}


@pytest.mark.parametrize(("gen", "n"), sorted(INPUT_SHA256))
def test_inputs_match_spec(gen, n):
    """§9.1: the generators reproduce the spec's float32 inputs bit for bit."""
    assert sha256({"sine": sine, "lcg": lcg, "imat": imat}[gen](n)) == INPUT_SHA256[(gen, n)]


def quant(name, x, qw=None):
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    out = np.empty((x.shape[0], x.shape[1] // 32 * BYTES[name]), np.uint8)
    q = np.zeros(0, np.float32) if qw is None else np.ascontiguousarray(qw, dtype=np.float32)
    getattr(legacy, "quantize_" + name.lower())(x, q, out)
    return out


def dequant(name, data, n):
    out = np.empty((data.shape[0], n), np.float32)
    getattr(legacy, "dequantize_" + name.lower())(data, out)
    return out


@pytest.mark.parametrize("name", sorted(V1))
def test_v1_sine_block(name):
    assert quant(name, sine(32)).tobytes().hex() == V1[name]


@pytest.mark.parametrize(("name", "use_imat"), sorted(V2))
def test_v2_lcg_row(name, use_imat):
    out = quant(name, lcg(64), imat(64) if use_imat else None)
    block, digest = V2[(name, use_imat)]
    assert out[0, : BYTES[name]].tobytes().hex() == block
    assert sha256(out) == digest


@pytest.mark.parametrize("name", sorted(V3))
def test_v3_tensor(name):
    x = lcg(4096).reshape(4, 1024)
    plain, with_imat, deq = V3[name]
    out = quant(name, x)
    assert sha256(out) == plain
    if with_imat is not None:
        assert sha256(quant(name, x, imat(1024))) == with_imat
    if deq is not None:
        assert sha256(dequant(name, out, 1024)) == deq


@pytest.mark.parametrize("name", sorted(ZERO))
def test_all_zero_row(name):
    assert quant(name, np.zeros(64, np.float32))[0, : BYTES[name]].tobytes().hex() == ZERO[name]


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_all_zero_imatrix_and_row(name):
    """All-zero importance vector: weights vanish, every search degenerates to ggml's fallbacks."""
    x = lcg(64)[None, :]
    out = quant(name, x, np.zeros(64, np.float32))
    assert out.shape == (1, 2 * BYTES[name])
    assert np.isfinite(dequant(name, out, 64)).all()


@pytest.mark.parametrize("name", sorted(BYTES))
def test_roundtrip_error_small(name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    y = dequant(name, quant(name, x), 256)
    rel = np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2))
    assert rel < {"Q4_0": 0.15, "Q4_1": 0.15, "Q5_0": 0.07, "Q5_1": 0.07}.get(name, 0.01)


def test_q8_1_sum_field():
    x = lcg(64)[None, :]
    out = quant("Q8_1", x).reshape(2, 36)
    for blk in out:
        d = np.frombuffer(blk[:2].tobytes(), np.float16)[0]
        s = np.frombuffer(blk[2:4].tobytes(), np.float16)[0]
        q = blk[4:].view(np.int8).astype(np.int64)
        assert abs(float(s) - float(d) * q.sum()) <= abs(float(s)) * 2e-3 + 1e-6


# --- the lane-parallel imatrix searches against the scalar primitives (one block at a time) ---------------


def _scalar_imat(name, x, qw):
    """Q4_0/Q5_0/Q4_1/Q5_1 imatrix paths written per block with primitives.make_qx_quants / make_qkx."""
    from edgequant.kernels.primitives import make_qkx, make_qx_quants

    f32 = np.float32
    nmax = {"Q4_0": 8, "Q5_0": 16, "Q4_1": 15, "Q5_1": 31}[name]
    rows, n = x.shape
    out = np.zeros((rows, n // 32, BYTES[name]), np.uint8)
    L = np.zeros(32, np.int32)
    Laux = np.zeros(32, np.int32)
    for r in range(rows):
        acc = f32(0)
        for v in x[r]:
            acc = f32(acc + f32(v * v))
        sigma2 = f32(acc / f32(n))
        for ib in range(n // 32):
            s = ib * 32
            w = (qw[s : s + 32] * np.sqrt(sigma2 + x[r, s : s + 32] * x[r, s : s + 32])).astype(np.float32)
            blk = out[r, ib]
            if name in ("Q4_0", "Q5_0"):
                d = make_qx_quants(32, nmax, x[r], s, w, 0, L, 0)
                blk[0:2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
                at = 2
            else:
                d, the_min = make_qkx(32, nmax, x[r], s, w, 0, L, 0, Laux, f32(-0.9), f32(0.05), 36, False)
                blk[0:2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
                blk[2:4] = np.frombuffer(np.float16(-the_min).tobytes(), np.uint8)
                at = 4
            codes = L.astype(np.int64)
            if nmax in (16, 31):
                qh = sum(int((codes[j] >> 4) & 1) << j for j in range(32))
                blk[at : at + 4] = np.frombuffer(np.uint32(qh).tobytes(), np.uint8)
                at += 4
            blk[at : at + 16] = (codes[:16] & 15) | ((codes[16:] & 15) << 4)
    return out.reshape(rows, -1)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_imatrix_lanes_match_scalar_search(name):
    """3 x 352 = 33 blocks: one full group of 32 lanes plus a short one, blocks spanning rows."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 352)).astype(np.float32)
    x[0, 32:64] = 0.0  # an all-zero block
    x[1, 64:96] = -0.25  # a flat block
    x[2, :32] = np.abs(x[2, :32])  # all positive: mn clamps to 0
    qw = rng.random(352).astype(np.float32)
    qw[100:140] = 0.0
    np.testing.assert_array_equal(quant(name, x, qw), _scalar_imat(name, x, qw))
