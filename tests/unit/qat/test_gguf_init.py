"""``qat.init_from_gguf``: QAT started from a GPTQ-rounded Q4_0 file reproduces that file exactly, and only
the weights whose code GPTQ changed move."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgequant.errors import ConfigError
from edgequant.gguf.block_fields import unpack_blocks
from edgequant.gguf.reader import GGUFFile
from edgequant.qat import QATConfig, QuantSpec, export_gguf, prepare
from edgequant.qat.gguf_init import MARGIN, init_from_gguf

TEXT = " ".join(f"the cat {i % 7} sat on mat {i % 5} and the dog ran {i % 3} times" for i in range(300))
Q4_0_LEARNED = QATConfig(weight=QuantSpec(method="ggml", format="Q4_0", learn_scale=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edgequant.models.convert import convert_hf_to_gguf
    from edgequant.workflows.gptq import collect_hessians
    from edgequant.workflows.quantize import quantize_model
    from tests.support.tiny import write_tiny_hf

    d = tmp_path_factory.mktemp("gguf_init")
    hf = write_tiny_hf(str(d / "hf"), "llama", "bpe", init_std=0.05)
    f32 = str(d / "tiny-F32.gguf")
    convert_hf_to_gguf(hf, f32, "F32")
    (d / "calib.txt").write_text(TEXT)
    gptq = str(d / "gptq-Q4_0.gguf")
    rep = quantize_model(f32, gptq, "Q4_0", hessians=collect_hessians(f32, str(d / "calib.txt"), n_ctx=128))
    assert any(t.out_err is not None and t.out_err < t.plain_err for t in rep.tensors)
    return hf, gptq


def _blocks(path):
    with GGUFFile(path) as r:
        return {
            t.name: (t.type_name, np.array(r.tensor_data(t))) for t in r.tensors if t.name.startswith("blk.")
        }


def test_qat_from_a_gptq_file_exports_that_file_and_moves_only_changed_codes(files, tmp_path):
    from edgequant.models import load_causal_lm

    hf, gptq = files
    model, tok = load_causal_lm(hf)
    prepare(model, Q4_0_LEARNED)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("proj.weight")}
    rep = init_from_gguf(model, gptq)
    assert rep["tensors"] == 14
    assert rep["weights"] == sum(v.numel() for v in before.values())
    assert 0 < rep["moved"] < rep["weights"] // 2
    # the deployed bytes of the initialized model are the GPTQ file's, q/k rows included
    out = str(tmp_path / "qat.gguf")
    export_gguf(model, tok, out)
    want, got = _blocks(gptq), _blocks(out)
    for name, (typ, raw) in want.items():
        if name.endswith("_norm.weight"):
            continue
        assert got[name][0] == typ == "Q4_0", name
        assert np.array_equal(got[name][1], raw), name
    # a weight moves only if its old value was not safely inside the bin of its new code
    for name, mod in ((n, m) for n, m in model.named_modules() if n.endswith("proj")):
        q = mod.weight_quantizer
        old, new = q.view(before[name + ".weight"]), q.view(mod.weight.detach())
        codes = torch.round(torch.clamp(new / q.step, -8, 7))
        t_old = old / q.step
        above = (t_old >= codes - 0.5 + MARGIN) | (codes == -8)  # the grid's ends have no outer bound
        below = (t_old <= codes + 0.5 - MARGIN) | (codes == 7)
        inside = above & below
        assert torch.equal(new[inside], old[inside]), name
        assert not torch.any(new[~inside] == old[~inside]), name


def test_unpack_blocks_inverts_pack_blocks():
    from edgequant.gguf import dequantize, quantize
    from edgequant.gguf.block_fields import pack_blocks

    w = np.random.default_rng(0).standard_normal((5, 96)).astype(np.float32)
    for qtype in ("Q4_0", "Q4_1", "Q8_0"):
        raw = quantize(w, qtype, threads=1)
        codes, d, m = unpack_blocks(qtype, raw, 5)
        assert np.array_equal(pack_blocks(qtype, codes, d, m), raw)
        back = (codes * d + (0 if m is None else m)).reshape(5, 96).astype(np.float32)
        assert np.array_equal(back, dequantize(raw, qtype, (5, 96)))


def test_wrong_format_and_fixed_scales_are_refused(files):
    from edgequant.models import load_causal_lm

    hf, gptq = files
    model, _ = load_causal_lm(hf)
    prepare(model, QATConfig(weight=QuantSpec(method="ggml", format="Q4_1", learn_scale=True)))
    with pytest.raises(ConfigError, match=r"blk\.0\.attn_q\.weight is Q4_0; the QAT weight .* Q4_1"):
        init_from_gguf(model, gptq)
    model, _ = load_causal_lm(hf)
    prepare(model, QATConfig(weight=QuantSpec(method="ggml", format="Q4_0")))
    with pytest.raises(ConfigError, match="needs learned scales"):
        init_from_gguf(model, gptq)
