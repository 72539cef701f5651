"""``edgequant convert`` and ``edgequant export-hf`` run as a user runs them (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.support.tiny import write_tiny_hf

    return write_tiny_hf(str(tmp_path_factory.mktemp("hf") / "tiny"), "llama", "bpe")


def test_convert_then_export_hf(tiny, tmp_path):
    out = tmp_path / "m.gguf"
    p = run("convert", tiny, out, "--outtype", "Q8_0", "--no-verify", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["ftype"] == "Q8_0"
    assert rep["verification"] is None
    assert rep["type_counts"]["Q8_0"] > 0
    p = run("export-hf", out, tmp_path / "hf", "--dtype", "bf16", "--json")
    assert p.returncode == 0, p.stderr
    assert "tokenizer.json" in json.loads(p.stdout)["files"]


@pytest.mark.parametrize("what", ["arch", "pickle", "tokenizer"])
def test_bad_input_is_one_line_and_leaves_nothing(tiny, tmp_path, what):
    import shutil

    d = tmp_path / "in"
    shutil.copytree(tiny, d)
    if what == "arch":
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"] = ["BertForMaskedLM"]
        (d / "config.json").write_text(json.dumps(cfg))
    elif what == "pickle":
        os.unlink(d / "model.safetensors")
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    else:
        os.unlink(d / "tokenizer.json")
    p = run("convert", d, tmp_path / "out.gguf", "--no-verify")
    assert p.returncode == 1
    assert p.stderr.startswith("edgequant convert: error:")
    assert "Traceback" not in p.stderr
    assert {"arch": "not supported", "pickle": "safetensors", "tokenizer": "tokenizer.json"}[what] in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["in"]
