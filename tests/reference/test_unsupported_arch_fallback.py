"""Commands on a GGUF architecture edgequant has no PyTorch form of (a tiny llama file relabelled
``xverse``, which llama.cpp runs with the same tensors and rope): ``perplexity`` falls back to llama.cpp and
says so in one line, with the same figures as llama.cpp on the llama file; ``export-hf`` and ``imatrix``
stop with one line naming the supported architectures and the llama.cpp alternative."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.reference
pytest.importorskip("llama_cpp")


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edgequant.models import convert_hf_to_gguf
    from tests.support.tiny import TRAIN_TEXT, rename_arch, write_tiny_hf

    d = tmp_path_factory.mktemp("fallback")
    hf = write_tiny_hf(str(d / "hf"), "llama", "bpe", seed=3)
    llama = str(d / "llama.gguf")
    convert_hf_to_gguf(hf, llama, "F32", verify=False)
    other = rename_arch(llama, str(d / "xverse.gguf"), "xverse")
    text = d / "text.txt"
    text.write_text(TRAIN_TEXT * 12)
    return llama, other, str(text), d


def test_perplexity_falls_back_to_llamacpp_and_says_so(files):
    from edgequant.eval.scoring import perplexity

    llama, other, text, _ = files
    p = _run("perplexity", other, "-f", text, "--ctx", "64", "--chunks", "2")
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    assert "architecture 'xverse'" in first
    assert "llama.cpp" in first
    a = perplexity(other, text, n_ctx=64, n_chunks=2, backend="auto")
    b = perplexity(llama, text, n_ctx=64, n_chunks=2, backend="llama.cpp")
    assert a["backend"] == "llama.cpp"
    assert a["ppl"] == b["ppl"]  # the same tensors in the same runtime
    t = perplexity(llama, text, n_ctx=64, n_chunks=2, backend="auto")
    assert (t["backend"], t["backend_note"]) == ("torch", None)  # a known architecture stays in PyTorch


@pytest.mark.parametrize("cmd", ["export-hf", "imatrix"])
def test_commands_without_a_fallback_say_what_to_do_in_one_line(files, cmd):
    _, other, text, d = files
    args = {
        "export-hf": ("export-hf", other, d / "out"),
        "imatrix": ("imatrix", other, "-f", text, "-o", d / "imatrix.gguf", "--ctx", "64"),
    }[cmd]
    p = _run(*args)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "'xverse'" in lines[0]
    assert "supported: llama, qwen2, qwen3, gemma3, phi3" in lines[0]
    assert "llama.cpp" in lines[0]
    assert not os.path.exists(d / "out")
