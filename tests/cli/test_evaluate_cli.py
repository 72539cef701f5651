"""``edgequant evaluate`` and ``edgequant report`` as a user runs them (subprocess, a tiny model converted in
code): --json, resuming, the report file, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp", reason="evaluate measures in llama.cpp (llama-cpp-python)")


def run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgequant.models.convert import convert_hf_to_gguf
    from tests.support.tiny import TRAIN_TEXT, write_tiny_hf

    d = tmp_path_factory.mktemp("evaluate-cli")
    model = str(d / "tiny-F32.gguf")
    convert_hf_to_gguf(write_tiny_hf(str(d / "hf"), "llama", "bpe", seed=2), model, "F32", verify=False)
    (d / "text.txt").write_text(TRAIN_TEXT * 12)
    return model, str(d / "text.txt"), d


def _evaluate(model, text, out, *extra, check=True):
    small = ("--ctx", 64, "--chunks", 2, "--threads", 1, "--n-prompt", 32, "--n-gen", 4, "--fit-ctx", 128)
    return run("evaluate", model, "-f", text, "--calibration", text, *small, "-o", out, *extra, check=check)


def test_help_has_examples():
    for cmd in ("evaluate", "report"):
        out = run(cmd, "--help").stdout
        assert "examples:" in out
        assert "edgequant report results.json -o report.html" in out


def test_evaluate_resume_and_report(tiny, tmp_path):
    model, text, _ = tiny
    out = tmp_path / "results.json"
    doc = json.loads(_evaluate(model, text, out, "--ftypes", "Q8_0", "--no-imatrix", "--json").stdout)
    assert [r["label"] for r in doc["candidates"]] == ["Q8_0"]
    assert doc["skipped"] == []
    again = _evaluate(model, text, out, "--ftypes", "Q8_0", "--no-imatrix")
    assert "1 already measured, skipped" in again.stdout
    assert "Q8_0" in again.stdout
    html = tmp_path / "report.html"
    summary = json.loads(run("report", out, "-o", html, "--json").stdout)
    assert summary["figures"] == 2  # curve, speed (no sensitivity table asked)
    page = html.read_text()
    assert summary["bytes"] == len(page.encode()) < 3 * 2**20
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)


def test_bad_input_is_one_line(tiny, tmp_path):
    from tests.support.tiny import write_tiny_llama

    model, text, d = tiny
    r = _evaluate(model, str(d / "missing.txt"), tmp_path / "r.json", check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "cannot read text file" in r.stderr
    assert "missing.txt" in r.stderr
    assert not (tmp_path / "r.json").exists()
    # a results file of another model
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(
            {"format": "edgequant-evaluation", "version": 1, "candidates": []}
            | {"model": {"file": "x.gguf", "arch": "llama", "n_layer": 9, "sha256": "0" * 64}}
        )
    )
    r = _evaluate(model, text, other, check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "holds results of another model, x.gguf (llama, 9 layers" in r.stderr
    # report of a file of another format version
    other.write_text(json.dumps({"format": "edgequant-evaluation", "version": 99}))
    r = run("report", other, "-o", tmp_path / "r.html", check=False)
    assert r.returncode == 1
    assert "version 99" in r.stderr
    assert r.stderr.count("\n") == 1
    r = run("evaluate", write_tiny_llama(str(tmp_path / "t.gguf")), "--smollm2", "-o", other, check=False)
    assert "give one model" in r.stderr
