"""K-quant kernels (Q2_K ... Q6_K, Q8_K) against the test vectors of ggml-quants.md §9 (produced by ggml).

Also: dequantizers against gguf-py's NumPy ones (verified bit-identical to ggml, §10) on random blocks,
per-block independence (Q4_K/Q5_K search two super-blocks at once, so row/block grouping must not
matter), and the all-zero rows of §9.5. The live comparison with llama.cpp is in ``tests/reference``.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.kernels import kquants
from tests.support.cases import random_blocks, row_cases
from tests.support.vectors import imat, lcg, sha256, sine

BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210, "Q8_K": 292}
TYPES = list(BYTES)
IMATRIX_TYPES = TYPES[:-1]  # Q8_K has no imatrix path
FP16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}

# §9.2 V1: SINE(256), no imatrix, one block
V1 = {
    "Q2_K": (
        "eeeeeecdcdeedeeefefefffefffefffe02060b1b1f6f7fbefef9f9e4e4908040410206071b2f6fbfbefef9f9e4e09090"
        "f9f9e4e49090414106061b1b6f6fbfbefef9f9e4e49090414106061b1b6f6fbf601cba1e"
    ),
    "Q3_K": (
        "5f7e7e7c3cb8b8b0b0a1a183c3c7c74f1f1f3e3e7c7cf8f8f0f0e1e1c3c38787fcf7f1dd8464118247491e277b9fef7f"
        "bdfcf7e1dd8470119247491e277b9fef3932274bbf2f5e8dc8d6e1f9846031b2441912274b9f2f7ebdf8f6e1d9846411"
        "11111102f2011111c0000000f612"
    ),
    "Q4_K": (
        "260b7016fffffbfbfefefffffcecfdfd275a7caeceeeedebd8b683613010010215275a7caeceeeedebd8b68361301001"
        "10010315385b8dbfdffffefce9b693613010010315385b8dbfdffffefce9b693b683613010010315385b8dbfdffffdfb"
        "d9b683613010010315385b8dbfdffffdeefdebd8b583513010010315385b8dbedfeefdebd8b583513010010315385b8d"
    ),
    "Q5_K": (
        "c4068616fefffffefdfefffffeeeeeeee0e1c1c387870f0f1f1e3e3c7c78f8f0f0e0e1c1c387870f0f1f1e3e3c7c78f8"
        "5fa5fa5dafdefce7b27c27c3703001052a5fa5fa5dafdefce7b27c27c37030013002052a60b50a6dbfeefbf7c27c27c3"
        "713002052a60b50a6dbfeefbe7c27c277c17c3602002062b61b60b6ebfeefce7b27c17b3602002062b61b61b6ebfeefc"
        "eefbe7b16b16b2602002062b61b61b6ebfeefbe7b16b16b2602002062b61b61b"
    ),
    "Q6_K": (
        "f0c55bb4f142a7300a267109be7f2ca5ebf0b44ba4f142a7401b268119be7f1ca5fbf0c44ba4f132a7300b268119ce7f"
        "2ca5fbffc44aa3e03197300b27821acfe782fa3f8fdc540a0e43c97330e288e10c28822adf8f3bb4fafeb33993d02298"
        "210c28822ade9f3bb3f9feb33a93d12398311c38922adf9f3bb3f9fea33983d1fef9f8e4d09040410106071b1f6f7fbf"
        "fefef9f4e4d09040410106071b1f6f7f36372b2f5f4f8fcecdc9c4d4e0a070710106071b1f6f7fbffefdf9f4e4d09040"
        "8181818483808283838280817b838381a601"
    ),
    "Q8_K": (
        "80694eba00d2aa8e82869bbde91843667a7e71552dffd1aa8e81869bbeea1944667b7e71542cfed0a98d81869cbfeb19"
        "45677b7e71542bfdd0a88d81879cc0ec1a45677b7e70532bfdcfa88d81879dc0ec1b46687b7e70522afccea78c81879e"
        "c1ed1c47687b7e6f5229fbcda78c81879ec2ee1d48697c7e6f5128facca68c81889fc3ef1e48697c7e6f5027f9cca58b"
        "81889fc3f01f496a7c7e6e5027f8cba58b8188a0c4f11f4a6a7c7d6e4f26f7caa48b8189a0c5f2204a6b7c7d6d4e25f6"
        "c9a48a8189a1c6f2214b6b7d7d6d4e24f6c9a38a8189a1c7f3224c6c7d7d6c4d23f5c8a28a8189a2c7f4234d6c7d7d6c"
        "4c22f4c7a289818aa3c8f5244d6c7d7d6b4c22f3d2ffacff8fff83ff87ff99ffb9ffe5ff0f003d005e0073007e007400"
        "5c003900"
    ),
}

# §9.3 V2: LCG(512) row, without / with IMAT(512): SHA-256 of the row ...
V2_SHA = {
    ("Q2_K", False): "1389f1a7d5478d9d61ee12a27ef8abef379ac91b1791eedb77149cf9f5946fbd",
    ("Q2_K", True): "42ed80bdfb9bc2ef770d141a098ed28e4812b895c663784b2954b6896bd62c01",
    ("Q3_K", False): "c2d964f643f77525069c3ceeb99b84a579bed8f8e82453f25d8b4e588aef2946",
    ("Q3_K", True): "77cf2e88256181f30513966fe086f04944193dfada26a31cb2629567367e5ab6",
    ("Q4_K", False): "8264bbebb7cf16c5fe812c52a45882c51cb06e71f60287e23ed89b6f778ec3c1",
    ("Q4_K", True): "8c1439f20e542643fe04e5d902ee9ad0de4e26c6bd84b33d95627243033f9283",
    ("Q5_K", False): "baf79971369c9cca9803f6a57c4283f2b76b883283dda33bbbc78d9a1d229a9c",
    ("Q5_K", True): "b84afb8fb5031ecf04999d3496b2d961fa49dc220ba38055b64387a114dee901",
    ("Q6_K", False): "5b187deb8d13a37233cdf356acc580d4c8d2e1f4dd8119d350e3d1082dbb1121",
    ("Q6_K", True): "dc0ae9e77cad8de280f89dcc2be7cae581f90c1a07c5e52e2b3c7b944c606106",
    ("Q8_K", False): "71aba67ea1e400ebbe801d51836c6fb997e922bac659ab39a20a70fc3a8beb24",
}
# ... and the hex of its first block
V2_HEX = {
    ("Q2_K", False): (
        "1624bc232423ab24232a23ff237824139fd89d88d890dd8cb8ac8da8ccf98d1dbebdb51e3982f6434935628e5060467c"
        "bf7f6e96328effbb1db11c7abee48eb779aded3d6ab9a9792ca07ced39e809ad4e24c229"
    ),
    ("Q2_K", True): (
        "1523cf232323ba13232623ff23882313ebe8d988d990d988b8b8c9a8c8f9891abb7eb60e2942f7430935228f1020433c"
        "ff7f6e9632ceffbb1df11c79edd4ceb7396eee3e6bb9a97a2ca078ed39e809ad5a246b29"
    ),
    ("Q3_K", False): (
        "be3f7ad31ff1bbbb678f6a3fbbcdfa92c32321ef6a5d11edbe19f977fc58bd3a004133d100f07010f1240701013c1332"
        "eaec5cade6320e7773ccb6baa6747a5d9aefc96825f9de475fa399a4fcdeb95b5ff33393c04cbc13f1b11100500d8030"
        "bccbb80b5b05ba4596695089639d"
    ),
    ("Q3_K", True): (
        "be3f7ad31ff1bbbb678f6a3fbbcdfa92c32321ef6a5d11edbe19f977fc58bd3a004133d100f07020f1241701113c2332"
        "eafc6cadf6311d7763dcb5baa6756a5d8adfc96825f9de475fa39994ecdeb94b5ff33393c14cbc13f1b11004500d8030"
        "bb0ab81b4a16ba4596795089689d"
    ),
    ("Q4_K", False): (
        "e5127a215bf0902b09ef4a2b9bffe19fdfb3d6d1c404d5e3b2f3e7c1d2b5d7d9d7e4c5e5d2a6c6b8d3c4b6e6a1a0b7e0"
        "c9f8d6b2e7a5e6c2bfbcc0b9e1efc306ecdbfdb3bbd1ffc1c3afcbe1b4cac3cee7e8e5c4b5e5e6d8e3b3e0d4e4c1e6c8"
        "b7e8d8e8bfb4b5c8d000d3e5c6b1b5e5bf6e5baa0dd9eeaf2bcd3b4eddebb99e6eaafa4e9bddc98f39b98dfa6efb40e9"
    ),
    ("Q4_K", True): (
        "fb128c215bed902c09ef4a2b9deee19fefc3e6d1d404e5e3c2f3f7d1e2b5e7e8e7f4d5f5e2b6d6b8e3d4b6f6b1b0c7f0"
        "c9e8c6b2e7a5e6b2aebcc0b9e1efb306dcdbedb3abd1ffc1c3afbbe1b4cac3cee6e7e5c4b5e5e6d7e3b3e0d3e4c1e5c7"
        "b6e8d7e7beb4b5c8d000d2e5c5b1b5e5bf6e5baa0dd9eeaf2bcd3b4dddebb99e6eaafa4e9bddc98f39b98dfa6efb40e9"
    ),
    ("Q5_K", False): (
        "4d0e7f215ef3916f09ef492b9efff490ef7a6aea6ae8eaea6eee6a6eeaeeeaf36efefe7afeeaeefb6aceeeea6aee2aee"
        "be75aba29908bac684f6de93c56bbda1cee899dbb45c8c61a5876cdd53507de090eeab63dd49db735c689071c0cd740a"
        "b6b6e96555a1fe90845e74c16783948bedf0fba89aebfddff786e1d7f8b3eba08df0d0e09f888ba1d100c5faab829aea"
        "7ecda8550cc3dd4f469b679cbbd7723edd55e49c27ba831e53720bf5cdf870d3"
    ),
    ("Q5_K", True): (
        "890e72215cf1912f09f04a2c9dfff29fef6a6aea6ae8eaea6eee6a6eeaeeeaf36efefe7afeeaeefb6aceeeea6aee2aee"
        "bf85bca29908cac684f6ee93c56bbeb1cee899ebb45c9c61b6987cdd63607ee081df9c54ce4acc755d688062c2bd760b"
        "b7a6d96656a2ee82864e75b26874868ccdefdb9889daedbfe776d0c7d793db907de0c0d08e787b90c100a5ea9b728ada"
        "8fcda8550cc3ed4f46ac679cbbd7824edd55f49d27ca931f53830cf6cef870d3"
    ),
    ("Q6_K", False): (
        "31f58c8ad0409d93b623084835ccb974032eb24830dd1eef650d5ddf1b716263f15d01b04f9042d3bec6f4cf333bd101"
        "4d9b693698c0085684e7e81433a45c8b33ac29fee578810b9a0672ec4d5aba5c79c5b665e0309d949b8c45cd7c090e9e"
        "fe7a45b2079fbb867a31c01876b603707b5412e3bc8cfcee5100f0148e1c1c536896994a9652994a767a49668ab54919"
        "5b5d06fed97206b3b9c5927ef090b38c8b4f6ea502facf8b2dd12c49dde4fe87a55919a954261565da526a19a526c519"
        "31eda0eeec13a812ee31ed8012c2ee126689"
    ),
    ("Q6_K", True): (
        "31f59c9ad0509da3a613184845bcc974032eb34830dd0eef650c5def1b716263f15d01b04f9042d3bec6f4cf333bd101"
        "5daa892588c1184784c8ea2425a55d8a35ae29fee589820d990570ec4d58cb4e79c5a666e1309d959b8b54cd7c090e9e"
        "ff7b46b10590bd867c40c11977b5057f7b5412e3bc8cfcee5100f0048e1c1c536896994a9652994a767a49668ab54919"
        "5b5d06fed97206b3b9c5927ef090b38c8b4f6ea502fecf8b2dd12c49dde4fe83a55919a954261565da526a19a526c519"
        "31ed9fedeb13a813ef33ee8012c2ee125f89"
    ),
    ("Q8_K", False): (
        "571bae3b2ff907f1010004fbf7fb0cf4f8050b120bff0105f7080812fafe0809f4ee0bef04f60201fca00508f9120dfc"
        "08f20402080ffc0d04eefbf102fbf30bf0f0f50f0200fbf1fef9fbf2110bec02ee11f3fa09080cf407ef12eef31307ef"
        "f605f30ffe0e00f30bed0bf8f2f5fef60908f8a906040ef5f20212fdfbeff808f6fafdfb0b1005ff0305090ffcfaeffe"
        "fef406100b11101030000512efeef90406f20403080f0cf8f10910030fee09050dfa0bf6ee0f070cf1efeef80581fe0f"
        "f7eff20a100cfff80af30d12fb09fc0a07fdf10f0df8f50bfd05f210f2f109f90dffc2f309fbf906ee0e0f05f20bf5f8"
        "0d0f0904fc0611f8030d0a01f4090012fb11f60f2c000e00baffddffc8ff000087ffe2ff2a005c003b004bff3d00afff"
        "26004600"
    ),
}

# §9.4 V3: LCG(4096) as 4x1024 -> (quantized, quantized with IMAT(1024), dequantized no-imatrix result)
V3 = {
    "Q2_K": (
        "ed1505eb72d1e82b5f9127ece7c8971d43d5b8a718643b174b433999919480f0",
        "0b80b98acb689fdd7b1c458d4ff267cd9d83fc4b801bdea1884a2ca8a4bd807d",
        "be7f2606c3e9cd1051ddfb0be949b5a497c490d87b8c69185ba7b1e11c0ea42b",
    ),
    "Q3_K": (
        "98f78c3426a2f88eeb2a078a92e673805ed76b08239d9906620473629cddd5d0",
        "13b9a401e682423428371a1e13e3183e9057c3d3e1057e7836a69be891667fa2",
        "fab41a4592e555f5a1db5c426fae8021538f5b6a100412e1882836a5370f9e33",
    ),
    "Q4_K": (
        "4943608e55bf9f2b1d547943d98d94bf4da6c796c190dc001a59db0d0007c452",
        "15eea9a7c22bab974b535b77b60e1057ca2cb738a0bfbe4e43a748eb25a0e20f",
        "3c5562f660419b4c0a2e1a4a0851196fa4bc7c95ab1360bb25ffbeb6a2ccc245",
    ),
    "Q5_K": (
        "dec161a357b6f41b4c187152f4382a05b00ae6233114b4aef6dce54432a3ebfb",
        "5dbb67b6edd23d729c88d93b5233d2c8843a8b3c0b0bff4493cae18a8695b97d",
        "7de98da05474f407424b92079cdf8a61a1ea38fd8a6221987dc4326fe14758db",
    ),
    "Q6_K": (
        "469e935d4bcb409f5c74e961226a01af2a1ef9fc83419b016e7a72a5e1810647",
        "a382229117c4c193900c37a3420d6988089d468de70f980ce387e0538163bb12",
        "931204b337229a16955f23e44253923165a2f05bb013905c93bb636af0575555",
    ),
    "Q8_K": (
        "571e9da83690c533fc7d6f825b130cd2e943417007ef97a7c6f44ee0af8277b3",
        None,
        "aa9bd1e3398f12f2a2739073652f081596c0bdedc05e266f6e42e6f665d97bdf",
    ),
}

NO_QW = np.zeros(0, np.float32)


def quantize(qtype: str, x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    # poisoned output: every byte must be written
    out = np.full((x.shape[0], x.shape[1] // 256 * BYTES[qtype]), 0xA5, np.uint8)
    getattr(kquants, f"quantize_{qtype.lower()}")(x, NO_QW if qw is None else qw, out)
    return out


def dequantize(qtype: str, data: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.full((data.shape[0], n_per_row), np.nan, np.float32)
    getattr(kquants, f"dequantize_{qtype.lower()}")(np.ascontiguousarray(data), out)
    return out


@pytest.mark.parametrize("qtype", TYPES)
def test_v1_sine_block(qtype: str) -> None:
    assert quantize(qtype, sine(256)).tobytes().hex() == V1[qtype]


@pytest.mark.parametrize(("qtype", "with_imatrix"), sorted(V2_SHA))
def test_v2_lcg_row(qtype: str, with_imatrix: bool) -> None:
    q = quantize(qtype, lcg(512), imat(512) if with_imatrix else None)
    assert q[0, : BYTES[qtype]].tobytes().hex() == V2_HEX[(qtype, with_imatrix)]
    assert sha256(q) == V2_SHA[(qtype, with_imatrix)]


@pytest.mark.parametrize("qtype", TYPES)
def test_v3_tensor(qtype: str) -> None:
    x = lcg(4096).reshape(4, 1024)
    plain, with_imatrix, dequant = V3[qtype]
    q = quantize(qtype, x)
    assert sha256(q) == plain
    if with_imatrix is not None:
        assert sha256(quantize(qtype, x, imat(1024))) == with_imatrix
    assert sha256(dequantize(qtype, q, 1024)) == dequant


@pytest.mark.parametrize("qtype", TYPES)
def test_all_zero_row(qtype: str) -> None:
    """§9.5: an all-zero row gives all-zero blocks (Q8_K: d = 0, qs = 0; its bsums are written as 0)."""
    x = np.zeros((2, 512), np.float32)
    assert not quantize(qtype, x).any()
    assert not dequantize(qtype, quantize(qtype, x), 512).any()
    if qtype in IMATRIX_TYPES:
        assert not quantize(qtype, x, imat(512)).any()


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_blocks_are_independent(qtype: str, with_imatrix: bool) -> None:
    """Whole tensor == row by row == block by block (Q4_K/Q5_K pair super-blocks, also across rows)."""
    if with_imatrix and qtype not in IMATRIX_TYPES:
        pytest.skip("Q8_K has no imatrix path")
    _, x = row_cases(768, rows_per_case=1, seed=3)  # 3 super-blocks per row: pairs straddle rows
    qw = (np.random.default_rng(5).random(768) * 3).astype(np.float32) if with_imatrix else None
    whole = quantize(qtype, x, qw)
    by_row = np.concatenate([quantize(qtype, x[r : r + 1], qw) for r in range(x.shape[0])])
    assert np.array_equal(whole, by_row)
    nbytes = BYTES[qtype]
    for b in range(3):
        qb = None if qw is None else qw[256 * b : 256 * (b + 1)]
        block = quantize(qtype, x[:, 256 * b : 256 * (b + 1)], qb)
        assert np.array_equal(whole[:, nbytes * b : nbytes * (b + 1)], block)


@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_dequantize_matches_gguf_py(qtype: str) -> None:
    """Random block bytes with finite fp16 scales decode bit-identically to gguf-py (itself equal to ggml)."""
    quants = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType

    blocks = random_blocks(BYTES[qtype], 512, FP16_FIELDS[qtype], seed=11)
    ours = dequantize(qtype, blocks, 256)
    ref = quants.dequantize(blocks, GGMLQuantizationType[qtype]).astype(np.float32).reshape(ours.shape)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_dequantize_q8_k_random_blocks() -> None:
    """Q8_K: y = d * q with an f32 d (gguf-py has no Q8_K dequantizer)."""
    blocks = random_blocks(292, 256, (), seed=12, f32_fields=(0,))
    d = blocks[:, :4].copy().view(np.float32)
    q = blocks[:, 4:260].view(np.int8).astype(np.float32)
    assert np.array_equal(dequantize("Q8_K", blocks, 256).view(np.uint32), (d * q).view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_roundtrip_error_is_small(qtype: str) -> None:
    """Sanity: dequantize(quantize(x)) is close to x (relative RMS error within the format's range)."""
    x = np.random.default_rng(2).standard_normal((8, 512)).astype(np.float32)
    y = dequantize(qtype, quantize(qtype, x), 512)
    rel = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))
    limit = {"Q2_K": 0.5, "Q3_K": 0.25, "Q4_K": 0.12, "Q5_K": 0.06, "Q6_K": 0.03, "Q8_K": 0.01}[qtype]
    assert rel < limit


@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_fp16_scale_overflow_is_written_as_inf(qtype: str) -> None:
    """Huge rows overflow the fp16 super-scale to inf, as ggml writes it (llama.cpp then rejects the row)."""
    x = (np.random.default_rng(4).standard_normal((1, 256)) * 1e9).astype(np.float32)
    q = quantize(qtype, x)
    off = FP16_FIELDS[qtype][0]
    h = int(q[0, off]) | (int(q[0, off + 1]) << 8)
    assert h & 0x7C00 == 0x7C00
