"""``--rounding gptq`` end to end on a tiny llama (HF -> F32 GGUF in code): Hessians, file, errors, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgequant.errors import ConfigError
from edgequant.gguf.codecs import dequantize
from edgequant.gguf.imatrix import load_imatrix
from edgequant.gguf.reader import GGUFFile
from edgequant.workflows.gptq import collect_hessians
from edgequant.workflows.quantize import quantize_model, report_dict

TEXT = " ".join(f"the cat {i % 7} sat on mat {i % 5} and the dog ran {i % 3} times" for i in range(300))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from edgequant.models.convert import convert_hf_to_gguf
    from tests.support.tiny import write_tiny_hf

    d = tmp_path_factory.mktemp("gptq")
    hf = write_tiny_hf(str(d / "hf"), "llama", "bpe", init_std=0.05)
    out = str(d / "tiny-F32.gguf")
    convert_hf_to_gguf(hf, out, "F32")
    text = d / "calib.txt"
    text.write_text(TEXT)
    return out, str(text)


@pytest.fixture(scope="module")
def hessians(model):
    return collect_hessians(model[0], model[1], n_ctx=128, n_chunks=8)


def test_hessian_diagonal_is_the_imatrix_sum(model, hessians, tmp_path):
    from edgequant.workflows.imatrix import make_imatrix

    path = str(tmp_path / "im.gguf")
    make_imatrix(model[0], path, model[1], n_ctx=128, n_chunks=8)
    im = load_imatrix(path)
    assert set(im.entries) == set(hessians.names())
    for name, qw in im.entries.items():
        h, count = hessians.get(name)
        assert count == 8 * 128
        assert np.allclose(np.diagonal(h) / count, qw, rtol=1e-5)
        assert np.allclose(h, h.T)


def _tensors(path):
    with GGUFFile(path) as r:
        return {t.name: (t.type_name, t.shape_ne, np.array(r.tensor_data(t))) for t in r.tensors}


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q2_K", "Q4_0"])
def test_gptq_file_same_types_and_size_lower_output_error(model, hessians, tmp_path, ftype):
    plain_path, gptq_path = str(tmp_path / "plain.gguf"), str(tmp_path / "gptq.gguf")
    quantize_model(model[0], plain_path, ftype)
    rep = quantize_model(model[0], gptq_path, ftype, hessians=hessians)
    plain, gptq = _tensors(plain_path), _tensors(gptq_path)
    assert {k: v[:2] for k, v in plain.items()} == {k: v[:2] for k, v in gptq.items()}
    assert rep.bytes_out == len(open(plain_path, "rb").read())
    done = [t for t in rep.tensors if t.out_err is not None]
    assert {t.name for t in done} == {n for n in hessians.names() if gptq[n][0] not in ("F32", "F16")}
    for t in rep.tensors:
        typ, ne, raw = gptq[t.name]
        back = dequantize(raw, typ, (int(np.prod(ne[1:])), ne[0]))
        assert np.isfinite(back).all()
        if t.out_err is None:
            assert np.array_equal(raw, plain[t.name][2]), t.name  # untouched tensors are llama.cpp's bytes
        else:
            assert t.out_err <= t.plain_err
    summary = report_dict(rep)["gptq"]
    assert summary["out_err"] < 0.95 * summary["plain_err"]


def test_missing_text_is_an_error(model):
    with pytest.raises(ConfigError, match="needs calibration text"):
        collect_hessians(model[0], None)


def test_text_too_short_for_the_widths_is_an_error(model):
    # 4 chunks of 64 rows = 256 activation rows < ffn_down's 512 inputs: H would be singular by construction
    with pytest.raises(ConfigError, match="fewer than the widest layer input"):
        collect_hessians(model[0], model[1], n_ctx=64, n_chunks=4)


def test_text_shorter_than_two_contexts_is_an_error(model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the cat sat")
    with pytest.raises(ConfigError, match="tokenizes to"):
        collect_hessians(model[0], str(short))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgequant", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_cli_gptq_json_and_missing_text(model, tmp_path):
    out = tmp_path / "o.gguf"
    bad = _cli("quantize", model[0], out, "Q4_0", "--rounding", "gptq")
    assert bad.returncode != 0
    assert "needs calibration text" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    ok = _cli(
        "quantize", model[0], out, "Q4_0", "--rounding", "gptq", "-f", model[1], "--ctx", "128", "--json"
    )
    assert ok.returncode == 0, ok.stderr
    rep = json.loads(ok.stdout)
    assert rep["gptq"]["tensors"] > 0
    assert rep["gptq"]["out_err"] < rep["gptq"]["plain_err"]
    assert all(t["out_err"] <= t["plain_err"] for t in rep["tensors"] if "out_err" in t)


def test_gptq_composes_with_tensor_types(model, hessians, tmp_path):
    from edgequant.gguf.ftypes import QuantizeOptions

    opts = QuantizeOptions(tensor_types=((r"ffn_down", "Q6_K"), (r"attn_v", "Q8_0")))
    plain_path, gptq_path = str(tmp_path / "p.gguf"), str(tmp_path / "g.gguf")
    quantize_model(model[0], plain_path, "Q4_0", options=opts)
    rep = quantize_model(model[0], gptq_path, "Q4_0", options=opts, hessians=hessians)
    plain, gptq = _tensors(plain_path), _tensors(gptq_path)
    assert {k: v[:2] for k, v in plain.items()} == {k: v[:2] for k, v in gptq.items()}
    by = {t.name: t for t in rep.tensors}
    assert by["blk.0.ffn_down.weight"].new_type == "Q6_K"
    assert by["blk.0.attn_v.weight"].new_type == "Q8_0"
    assert by["blk.0.ffn_down.weight"].out_err <= by["blk.0.ffn_down.weight"].plain_err
    assert by["blk.0.attn_v.weight"].out_err is not None
