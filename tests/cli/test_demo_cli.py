"""``edgequant demo`` as a user runs it (subprocess): quantization table then the quality table.

The packaged SmolLM2 run takes minutes, so the test points ``--model`` at a tiny converted model and a
tiny text with a small quality evaluation; the code path is the default demo's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from tests.support.tiny import TRAIN_TEXT, write_tiny_hf

    d = tmp_path_factory.mktemp("demo-cli")
    hf = write_tiny_hf(str(d / "hf"), "llama", "bpe", seed=3)
    out = d / "tiny-F32.gguf"
    run("convert", hf, out, "--outtype", "f32", "--no-verify")
    text = d / "text.txt"
    text.write_text(TRAIN_TEXT * 12)
    return str(out), str(text)


def test_demo_json_has_quality_per_ftype(tiny_gguf):
    model, text = tiny_gguf
    args = ("--model", model, "--ftypes", "Q8_0,Q2_K", "--text", text, "--quality-ctx", 32)
    rep = json.loads(run("demo", *args, "--quality-chunks", 2, "--threads", 1, "--json").stdout)
    q = rep["quality"]
    assert q["text"] == text
    assert not q["default_text"]
    assert (q["n_ctx"], q["n_chunks"], q["n_scored_tokens"]) == (32, 2, 2 * 15)
    by = {r["ftype"]: r["quality"] for r in rep["results"]}
    assert set(by) == {"Q8_0", "Q2_K"}
    # Q8_0 is close to F32, Q2_K much further: the table really measures the files
    assert 0 <= by["Q8_0"]["mean_kld"] < by["Q2_K"]["mean_kld"]
    assert by["Q8_0"]["same_top_fraction"] >= by["Q2_K"]["same_top_fraction"]
    assert by["Q8_0"]["ppl"] == pytest.approx(q["base_ppl"], rel=0.05)


def test_demo_table_names_text_and_setup(tiny_gguf):
    model, text = tiny_gguf
    out = run("demo", "--model", model, "--ftypes", "Q4_0", "--text", text, "--quality-ctx", 32).stdout
    assert "Quality against the F32 file" in out
    assert "2 chunks of 32 tokens" in out
    assert "mean KLD" in out


def test_demo_no_quality(tiny_gguf):
    model, _ = tiny_gguf
    rep = json.loads(run("demo", "--model", model, "--ftypes", "Q8_0", "--no-quality", "--json").stdout)
    assert rep["quality"] is None
    assert "quality" not in rep["results"][0]
