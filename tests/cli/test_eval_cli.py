"""``edgequant imatrix`` and ``edgequant perplexity`` as a user runs them (subprocess, tiny HF model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.support.tiny import TRAIN_TEXT, write_tiny_hf

    d = tmp_path_factory.mktemp("eval-cli")
    model = write_tiny_hf(str(d / "hf"), "llama", "bpe", seed=1)
    text = d / "text.txt"
    text.write_text(TRAIN_TEXT * 12)
    return model, str(text), d


def test_help_names_the_default_text():
    for cmd in ("imatrix", "perplexity"):
        out = run(cmd, "--help").stdout
        assert "/usr/share/common-licenses/GPL-3" in out
        assert "examples:" in out


def test_imatrix_collect_then_merge(tiny, tmp_path):
    model, text, _ = tiny
    out = tmp_path / "im.gguf"
    rep = json.loads(
        run("imatrix", model, "-f", text, "-o", out, "--ctx", 32, "--chunks", 3, "--json").stdout
    )
    assert rep["entries"] == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert rep["n_chunks"] == 3
    assert rep["chunk_count"] == 3
    assert rep["datasets"] == [text]
    merged = tmp_path / "merged.dat"
    rep2 = json.loads(
        run("imatrix", "-o", merged, "--in-file", out, "--in-file", out, "--ctx", 32, "--json").stdout
    )
    assert rep2["format"] == "dat"
    assert rep2["chunk_count"] == 6
    from edgequant.gguf.imatrix import load_imatrix

    a, b = load_imatrix(out), load_imatrix(merged)
    assert b.chunk_count == 6
    for k in a.entries:  # the mean of squares is unchanged by merging a file with itself
        np.testing.assert_allclose(b.entries[k], a.entries[k], rtol=1e-6)


def test_imatrix_for_another_model_is_refused_without_output(tiny, tmp_path):
    from edgequant.gguf.imatrix import ImatrixEntry, write_stats

    model, text, _ = tiny
    for name, n, msg in (
        ("blk.7.attn_q.weight", 256, "is not a matmul weight"),
        ("blk.0.attn_q.weight", 100, "has 100 values"),
    ):
        bad = str(tmp_path / "bad.gguf")
        write_stats(bad, {name: ImatrixEntry(np.ones((1, n), np.float32), np.array([32]))}, "gguf", 32, ["x"])
        out = tmp_path / "out.gguf"
        p = run("imatrix", model, "-f", text, "-o", out, "--ctx", 32, "--in-file", bad, check=False)
        assert p.returncode == 1
        assert msg in p.stderr
        assert "another model" in p.stderr
        assert "Traceback" not in p.stderr
        assert not out.exists()


def test_perplexity_json_and_against_itself(tiny):
    model, text, _ = tiny
    res = json.loads(run("perplexity", model, "-f", text, "--ctx", 32, "--chunks", 2, "--json").stdout)
    assert res["n_chunks"] == 2
    assert res["n_scored_tokens"] == 2 * 15
    assert 1.0 < res["ppl"] < 1e4
    res = json.loads(
        run("perplexity", model, "-f", text, "--ctx", 32, "--chunks", 2, "--base", model, "--json").stdout
    )
    assert res["mean_kld"] < 1e-9
    assert res["same_top_fraction"] == 1.0
    out = run("perplexity", model, "-f", text, "--ctx", 32, "--chunks", 2).stdout
    assert "PPL =" in out


def test_text_too_short_is_one_clear_line(tiny, tmp_path):
    model, _, _ = tiny
    short = tmp_path / "short.txt"
    short.write_text("Hello there.")
    p = run("perplexity", model, "-f", short, "--ctx", 32, check=False)
    assert p.returncode == 1
    assert "short.txt tokenizes to" in p.stderr
    assert "needs at least 64" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("imatrix", model, "-f", short, "-o", tmp_path / "x.gguf", "--ctx", 32, check=False)
    assert p.returncode == 1
    assert "tokenizes to" in p.stderr
    assert not os.path.exists(tmp_path / "x.gguf")


def test_bad_chunking_names_the_flags(tiny, tmp_path):
    model, text, _ = tiny
    p = run("perplexity", model, "-f", text, "--ctx", 2, check=False)
    assert p.returncode == 1
    assert "--ctx must be an integer >= 4" in p.stderr
    p = run("imatrix", model, "-f", text, "-o", tmp_path / "x.gguf", "--ctx", 32, "--chunks", 0, check=False)
    assert p.returncode == 1
    assert "--chunks must be a positive integer" in p.stderr
