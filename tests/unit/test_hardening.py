"""Issue 17's building blocks: typed metadata, the text sanitizer and strict JSON, amplification limits,
stale temporaries, Q8_1's geometry."""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType
from gguf.constants import GGUFValueType as V

from edgequant.core.atomic import AtomicFile, remove_stale_temps
from edgequant.core.text import clean, dumps, json_safe, quote
from edgequant.errors import FormatError, ShapeError
from edgequant.gguf.reader import MAX_NESTED_ITEMS_BASE, QUANT_SIZES, GGUFFile
from tests.support.gguf_bytes import replace_kv, small_llama, write_gguf


def _meta(tmp_path, *kvs):
    path = write_gguf(str(tmp_path / "m.gguf"), list(kvs), [])
    with GGUFFile(path) as r:
        return r.meta


# -- typed metadata --


def test_get_int_accepts_every_integer_width_and_checks_range(tmp_path):
    m = _meta(tmp_path, ("a", V.UINT8, 7), ("b", V.INT64, -3), ("c", V.UINT64, 2**64 - 1), ("d", V.UINT32, 0))
    assert m.get_int("a") == 7
    assert m.get_int("b") == -3
    assert m.get_int("missing", 5) == 5
    with pytest.raises(
        FormatError, match=r"'c' is UINT64 18446744073709551615; expected an integer in \[1, 512\]"
    ):
        m.get_int("c", min=1, max=512)
    with pytest.raises(FormatError, match=r"'d' is UINT32 0; expected an integer >= 1"):
        m.get_int("d", min=1)
    with pytest.raises(FormatError, match=r"m\.gguf: metadata key 'missing' is missing"):
        m.get_int("missing")
    with pytest.raises(FormatError, match="expected UINT32"):
        m.get_int("a", types=(V.UINT32,))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ((V.STRING, "abc"), "STRING 'abc'"),
        ((V.FLOAT32, float("nan")), "FLOAT32 nan"),
        ((V.FLOAT64, float("inf")), "FLOAT64 inf"),
        ((V.BOOL, True), "BOOL True"),
        ((V.ARRAY, [], V.UINT32), "an ARRAY of 0 UINT32"),
        ((V.ARRAY, [(V.ARRAY, [])], V.ARRAY), "an ARRAY of 1 ARRAY"),
    ],
)
def test_get_int_names_file_key_type_and_expectation(tmp_path, value, shown):
    m = _meta(tmp_path, ("llama.block_count", *value))
    with pytest.raises(FormatError) as ei:
        m.get_int("llama.block_count", min=1, first_of_array=True)
    msg = str(ei.value)
    assert msg.startswith(str(tmp_path / "m.gguf"))
    assert f"'llama.block_count' is {shown}; expected an integer >= 1 (or an array of them)" in msg


def test_get_int_first_of_array(tmp_path):
    m = _meta(tmp_path, ("h", V.ARRAY, [8, 4], V.INT32), ("s", V.ARRAY, ["x"], V.STRING))
    assert m.get_int("h", first_of_array=True) == 8
    with pytest.raises(FormatError):
        m.get_int("h")
    with pytest.raises(FormatError):
        m.get_int("s", first_of_array=True)


def test_get_float_str_bool_array(tmp_path):
    m = _meta(
        tmp_path,
        ("f", V.FLOAT32, 0.5),
        ("n", V.FLOAT32, float("nan")),
        ("s", V.STRING, "llama"),
        ("b", V.BOOL, False),
        ("t", V.ARRAY, ["a", "b"], V.STRING),
        ("x", V.ARRAY, [1.0, float("inf")], V.FLOAT32),
    )
    assert m.get_float("f", min=0) == 0.5
    with pytest.raises(FormatError, match="finite float"):
        m.get_float("n")
    assert math.isnan(m.get_float("n", finite=False))
    assert m.get_str("s", choices=("llama", "qwen2")) == "llama"
    with pytest.raises(FormatError, match="one of qwen2"):
        m.get_str("s", choices=("qwen2",))
    with pytest.raises(FormatError, match="expected a STRING"):
        m.get_str("f")
    assert m.get_bool("b") is False
    assert m.get_array("t", etype="str") == ["a", "b"]
    with pytest.raises(FormatError, match="ARRAY of int"):
        m.get_array("t", etype="int")
    with pytest.raises(FormatError, match="element 1 is not finite"):
        m.get_array("x", etype="float", finite=True)


def test_alignment_must_be_uint32(tmp_path):
    kvs, tensors = small_llama()
    path = write_gguf(str(tmp_path / "a.gguf"), [*kvs, ("general.alignment", V.INT8, 32)], tensors)
    with pytest.raises(FormatError, match=r"general\.alignment' is INT8 32; expected UINT32"):
        GGUFFile(path)


def test_model_info_bounds(tmp_path):
    from edgequant.workflows.quantize import model_info

    kvs, tensors = small_llama()
    for bad in ((V.INT32, -1), (V.UINT64, 2**64 - 1), (V.UINT32, 513), (V.STRING, "abc")):
        path = write_gguf(str(tmp_path / "b.gguf"), replace_kv(kvs, "llama.block_count", *bad), tensors)
        with GGUFFile(path) as r, pytest.raises(FormatError, match=r"llama\.block_count"):
            model_info(r.meta)
    path = write_gguf(
        str(tmp_path / "c.gguf"),
        replace_kv(kvs, "llama.attention.head_count", V.ARRAY, [4, 4], V.UINT32),
        tensors,
    )
    with GGUFFile(path) as r:
        assert model_info(r.meta).n_head == 4


# -- text and JSON --


def test_clean_escapes_control_characters_and_cuts():
    assert clean("a\nb\tc\x1b]0;t\x07\x7f\u2028d") == "a\\nb\\tc\\x1b]0;t\\x07\\x7f\\u2028d"
    assert clean("é中文 [/INST]") == "é中文 [/INST]"
    s = clean("x" * 1000, 50)
    assert len(s) == 50
    assert s.endswith("…")
    assert quote("a\nb") == "'a\\nb'"
    assert clean("\ud800") == "\\ud800"  # a lone surrogate from JSON


def test_json_safe_and_strict_dumps():
    obj = {
        "a": float("nan"),
        "b": [np.float32("inf"), -math.inf],
        "c": np.arange(3),
        "d": np.int64(2),
        "e": b"xy",
    }
    text = dumps(obj)

    def bad(token):
        raise ValueError(token)

    back = json.loads(text, parse_constant=bad)
    assert back == {"a": "NaN", "b": ["Infinity", "-Infinity"], "c": [0, 1, 2], "d": 2, "e": "<2 bytes>"}
    assert json_safe(True) is True


# -- amplification limits --


def test_nested_arrays_are_capped_relative_to_file_size(tmp_path):
    n = MAX_NESTED_ITEMS_BASE * 4
    body = b"".join([struct.pack("<IQ", V.UINT8, 0)] * n)
    kv = struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", V.ARRAY, V.ARRAY, n) + body
    path = tmp_path / "n.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv)
    with pytest.raises(FormatError, match="too many arrays inside arrays"):
        GGUFFile(path)
    small_n = MAX_NESTED_ITEMS_BASE // 2  # a few thousand nested arrays are still read
    body = b"".join([struct.pack("<IQ", V.UINT8, 0)] * small_n)
    kv = struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", V.ARRAY, V.ARRAY, small_n) + body
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv)
    with GGUFFile(path) as r:
        assert len(r.kvs["k"].value) == small_n


# -- stale temporaries --


def test_remove_stale_temps_only_takes_dead_processes_files(tmp_path):
    target = tmp_path / "out.gguf"
    dead = tmp_path / ".out.gguf.tmp-999999999-deadbeef"
    dead_dir = tmp_path / ".out.gguf.tmp-999999998-00c0ffee"
    live = tmp_path / f".out.gguf.tmp-{os.getpid()}-01234567"
    odd = tmp_path / ".out.gguf.tmp-999999999-notahexx"
    other = tmp_path / ".out.gguf2.tmp-999999999-deadbeef"
    for p in (dead, live, odd, other):
        p.write_bytes(b"x")
    dead_dir.mkdir()
    (dead_dir / "f").write_bytes(b"x")
    removed = remove_stale_temps(target)
    assert sorted(map(os.path.basename, removed)) == sorted([dead.name, dead_dir.name])
    assert live.exists()
    assert odd.exists()
    assert other.exists()
    dead.write_bytes(b"x")
    with AtomicFile(target) as f:  # every atomic write cleans up first
        f.write(b"data")
    assert not dead.exists()
    assert target.read_bytes() == b"data"


# -- Q8_1 --


def test_q8_1_geometry_is_ggml_block_q8_1():
    """ggml's block_q8_1: fp16 d, fp16 s, int8 qs[32] = 36 bytes (gguf-py's table says 40)."""
    from edgequant.gguf.codecs import get_codec

    assert QUANT_SIZES[GGMLQuantizationType.Q8_1] == (32, 36)
    assert (get_codec("Q8_1").block_size, get_codec("Q8_1").type_size) == (32, 36)


def test_q8_1_geometry_against_ggml_type_size():
    from tests.support import ggml_peer

    if not ggml_peer.available():
        pytest.skip("llama-cpp-python (libggml-base) is not installed")
    for qtype, (block, size) in QUANT_SIZES.items():
        try:
            t = ggml_peer.ggml_type(int(qtype))
        except ValueError:
            continue
        assert (t.block_size, t.type_size) == (block, size), qtype.name


def test_shape_error_names_file_and_tensor(tmp_path):
    kvs, tensors = small_llama()
    path = write_gguf(str(tmp_path / "s.gguf"), kvs, tensors)
    with GGUFFile(path) as r:
        t = r.tensors[0]
        bad = type(t)(t.name, t.shape_ne, t.np_shape, t.type_id, "Q8_0", t.offset, t.nbytes, t.n_elements)
        with pytest.raises(ShapeError) as ei:
            r.tensor_f32(bad)
    assert str(path) in str(ei.value)
    assert "'token_embd.weight'" in str(ei.value)
