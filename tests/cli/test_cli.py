"""The command line, run as a user runs it: in a subprocess, checking exit codes, output and files left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support.tiny import write_tiny_llama


def run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(str(tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf"))


def leftovers(d):
    return sorted(p for p in os.listdir(d) if p.startswith("."))


def test_help_lists_commands_with_examples():
    out = run("--help").stdout
    for cmd in ("quantize", "inspect", "dequantize", "demo"):
        assert cmd in out
    assert "examples:" in run("quantize", "--help").stdout


def test_quantize_then_inspect_json(tiny, tmp_path):
    out = tmp_path / "q.gguf"
    rep = json.loads(run("quantize", "--json", tiny, out, "q4_k_m", "2").stdout)
    assert rep["ftype"] == "Q4_K_M"
    assert rep["type_counts"]["F32"] == 5  # 2 layers x 2 norms + output_norm
    info = json.loads(run("inspect", out, "--json").stdout)
    assert info["ftype"] == "Q4_K_M"
    assert info["n_tensors"] == 20
    assert info["type_counts"] == rep["type_counts"]
    assert info["metadata"]["general.file_type"] == 15


def test_quantize_without_output_name_writes_beside_input(tiny, tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(open(tiny, "rb").read())
    run("quantize", src, "Q8_0")
    assert (tmp_path / "ggml-model-Q8_0.gguf").exists()


def test_dry_run_writes_nothing(tiny, tmp_path):
    plan = json.loads(run("quantize", "--dry-run", "--json", tiny, tmp_path / "x.gguf", "Q4_K_M").stdout)
    assert {
        p["name"] for p in plan if p["new_type"] == "Q6_K"
    }  # output (tied token_embd) and more-bits layers
    assert os.listdir(tmp_path) == []


def test_dequantize_to_gguf_and_safetensors(tiny, tmp_path):
    q = tmp_path / "q.gguf"
    run("quantize", tiny, q, "Q5_K_M")
    run("dequantize", q, tmp_path / "back.gguf")
    run("dequantize", q, tmp_path / "back.safetensors", "--outtype", "f16")
    from edgequant.gguf.reader import GGUFFile

    with GGUFFile(q) as rq, GGUFFile(tmp_path / "back.gguf") as rb:
        for t in rq.tensors:
            assert np.array_equal(rq.tensor_f32(t), rb.tensor_f32(t.name))
        assert rb.get("general.file_type") == 0
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    st = safetensors_numpy.load_file(str(tmp_path / "back.safetensors"))
    with GGUFFile(q) as rq:
        w = rq.tensor("blk.0.ffn_down.weight")
        assert st[w.name].dtype == np.float16
        assert st[w.name].shape == w.np_shape
        assert np.array_equal(st[w.name], rq.tensor_f32(w).astype(np.float16))
        assert st["output_norm.weight"].dtype == np.float32


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["quantize", "{tiny}", "{out}", "Q9_K"], "unknown ftype 'Q9_K'"),
        (["quantize", "{tiny}", "{out}", "IQ2_XXS"], "IQ1/IQ2/IQ3"),
        (["quantize", "--output-tensor-type", "q4_k_m", "{tiny}", "{out}", "Q4_0"], "is a file mixture"),
        (["quantize", "--token-embedding-type", "q6_k", "{bad_width}", "{out}", "Q4_0"], "not a multiple"),
        (
            ["quantize", "--token-embedding-type", "q6_k", "{bad_width}", "{out}", "Q4_0"],
            "--token-embedding-type q6_k",
        ),
        (["quantize", "{quantized}", "{out}", "Q8_0"], "set --allow-requantize to do it anyway"),
        (["quantize", "{missing}", "{out}", "Q4_0"], "No such file"),
        (["quantize", "{tiny}", "/nonexistent-dir/out.gguf", "Q4_0"], "does not exist"),
        (["quantize", "{truncated}", "{out}", "Q4_0"], "truncated"),
        (["quantize", "{not_gguf}", "{out}", "Q4_0"], "not a GGUF file"),
        (["quantize", "{nan}", "{out}", "Q4_0"], "blk.1.attn_q.weight': row 7"),
        (
            ["quantize", "--include-weights", "a", "--exclude-weights", "b", "{tiny}", "{out}", "Q4_0"],
            "cannot be used",
        ),
        (["inspect", "{truncated}"], "truncated"),
        (["dequantize", "{tiny}", "{tmp}/x.bin"], ".gguf or .safetensors"),
    ],
)
def test_bad_input_one_line_error_nonzero_exit_no_output(tiny, tmp_path, args, words):
    full = open(tiny, "rb").read()
    (tmp_path / "trunc.gguf").write_bytes(full[: len(full) // 2])
    (tmp_path / "zip.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    paths = {
        "tiny": tiny,
        "out": tmp_path / "out.gguf",
        "missing": tmp_path / "nope.gguf",
        "tmp": tmp_path,
        "truncated": tmp_path / "trunc.gguf",
        "not_gguf": tmp_path / "zip.gguf",
        "nan": write_tiny_llama(str(tmp_path / "nan.gguf"), poison=("blk.1.attn_q.weight", 7)),
        "bad_width": write_tiny_llama(str(tmp_path / "w.gguf"), width=288, ff=320),
        "quantized": tmp_path / "q.gguf",
    }
    if "{quantized}" in args:
        from edgequant.workflows.quantize import quantize_model

        quantize_model(tiny, paths["quantized"], "Q4_0")
    proc = run(*[a.format(**paths) for a in args], check=False)
    assert proc.returncode == 1
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out.gguf").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_partial_output(tmp_path, sig):
    src = write_tiny_llama(str(tmp_path / "big.gguf"), n_layer=6, width=1024, ff=4096, vocab=8192)
    out = tmp_path / "out.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgequant", "quantize", src, out, "Q2_K", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs with SIGINT ignored: restore the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not leftovers(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # wait until the temporary output exists: the run is mid-write
    assert proc.poll() is None, "quantization finished before it could be interrupted"
    time.sleep(0.3)
    proc.send_signal(sig)
    _, _err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_the_gguf_side_of_the_cli_never_imports_torch():
    """`edgequant inspect/quantize/--help` run with numpy and numba alone: building the parser (which
    imports every subcommand module) and importing the packages' lazy APIs must not pull in torch."""
    code = (
        "import sys\n"
        "from edgequant.cli.main import build_parser\n"
        "build_parser()\n"
        "import edgequant, edgequant.eval, edgequant.models, edgequant.gguf\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
