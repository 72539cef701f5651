"""``edgequant qat`` run as a user runs it: a subprocess on a tiny Hugging Face llama built in code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TEXT = (
    "The licenses for most software are designed to take away your freedom to share and change it. "
    "By contrast, this license is intended to guarantee your freedom to share and change free software. "
) * 12


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgequant", "qat", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.support.tiny import write_tiny_hf

    d = tmp_path_factory.mktemp("qat_cli")
    (d / "train.txt").write_text(TEXT)
    (d / "eval.txt").write_text(TEXT[::-1])
    return d, write_tiny_hf(str(d / "hf"), tie_word_embeddings=True)


def test_qat_trains_logs_and_exports(tiny):
    d, hf = tiny
    log, out = d / "loss.jsonl", d / "qat.gguf"
    proc = run(
        hf,
        "--text",
        d / "train.txt",
        "--eval-text",
        d / "eval.txt",
        "--steps",
        3,
        "--seq-len",
        32,
        "--format",
        "Q4_0",
        "--log",
        log,
        "--out",
        out,
        "--json",
        "--threads",
        1,
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["steps"] == 3
    assert rep["export"]["types"]["Q4_0"] == 14  # 7 linear layers x 2 blocks, all on the Q4_0 grid
    assert rep["export"]["bitwise_checked"] > 0
    assert rep["after"]["ppl"] > 0
    assert rep["float"]["ppl"] > 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "kd", "ce", "lr", "alpha", "seconds"} <= set(records[0])
    assert out.exists()
    assert not (d / "loss.jsonl.partial").exists()


def test_bad_inputs_give_one_line_errors_and_no_output(tiny):
    d, hf = tiny
    out = d / "never.gguf"
    proc = run(d / "missing-model", "--out", out, "--steps", 2)
    assert proc.returncode == 1
    assert "missing-model" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run(hf, "--text", d / "no-such.txt", "--out", out)
    assert proc.returncode == 1
    assert "no-such.txt" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run(hf, "--steps", 0, "--out", out)
    assert proc.returncode == 1
    assert "steps" in proc.stderr
    proc = run(hf, "--format", "Q3_X")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert not out.exists()
    assert not [f for f in os.listdir(d) if f.startswith(".never")]


def test_init_from_a_quantized_file_and_its_errors(tiny):
    from edgequant.models.convert import convert_hf_to_gguf
    from edgequant.workflows.quantize import quantize_model

    d, hf = tiny
    f32, q4 = str(d / "f32.gguf"), str(d / "q4_0.gguf")
    convert_hf_to_gguf(hf, f32, "F32")
    quantize_model(f32, q4, "Q4_0")
    out = d / "from-q4.gguf"
    proc = run(
        hf, "--text", d / "train.txt", "--steps", 2, "--seq-len", 32, "--init", q4, "--out", out, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["init"]["tensors"] == 14
    assert rep["init"]["weights"] > 0
    assert rep["export"]["types"]["Q4_0"] == 14
    for bad, words in (
        (["--format", "lsq", "--init", q4], ["--init", "learned block scales", "lsq"]),
        (["--init", d / "nope.gguf"], ["--init", "nope.gguf", "does not exist"]),
        (["--format", "Q8_0", "--init", q4], ["q4_0.gguf", "Q4_0", "Q8_0"]),
    ):
        proc = run(hf, "--text", d / "train.txt", "--steps", 1, "--seq-len", 32, *bad)
        assert proc.returncode == 1, bad
        assert all(w in proc.stderr for w in words), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
