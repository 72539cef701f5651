"""Checkpoints move between edgequant and transformers+bitsandbytes both ways (tiny Llama built in code).

transformers -> edgequant: ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` then
``save_pretrained``; edgequant's ``load_quantized`` reads the file into a float skeleton.
edgequant -> transformers: ``quantize_`` + ``save_quantized`` + config.json with
``transformers_quantization_config``; ``from_pretrained`` loads it. Logits are compared bit for bit.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from edgequant.nn import (
    Int8Config,
    NF4Config,
    load_quantized,
    quantize_,
    save_quantized,
    transformers_quantization_config,
)

pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.reference, pytest.mark.slow]
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import torch._dynamo

    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("llama") / "float"
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    yield cfg, path
    torch._dynamo.config.disable = old


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_both_ways(tiny_llama, tmp_path, kind):
    cfg, float_dir = tiny_llama
    if kind == "nf4":
        hf_q = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True
        )
        config = NF4Config(bnb_cpu_compatible=True)
    else:
        hf_q = transformers.BitsAndBytesConfig(load_in_8bit=True)
        config = Int8Config()
    ids = torch.randint(0, 128, (1, 10))
    theirs = transformers.LlamaForCausalLM.from_pretrained(
        float_dir, quantization_config=hf_q, device_map="cpu"
    ).eval()
    theirs.save_pretrained(tmp_path / "hf")
    ours = transformers.LlamaForCausalLM(cfg).eval()
    load_quantized(ours, tmp_path / "hf" / "model.safetensors")
    _assert_same_logits(ours, theirs, ids, kind)

    mine = transformers.LlamaForCausalLM.from_pretrained(float_dir).eval()
    quantize_(mine, config)
    out = tmp_path / "eq"
    out.mkdir()
    save_quantized(mine, out / "model.safetensors", config)
    cfg_json = json.loads((float_dir / "config.json").read_text())
    cfg_json["quantization_config"] = transformers_quantization_config(config)
    (out / "config.json").write_text(json.dumps(cfg_json))
    back = transformers.LlamaForCausalLM.from_pretrained(out, device_map="cpu").eval()
    _assert_same_logits(mine, back, ids, kind)


def _pin_bnb_4bit_to_float32_path(model):
    """On AVX512-BF16 CPUs bnb's Linear4bit runs eval without grad as a bf16 GEMM (``has_avx512bf16()``);
    that path is compared with its own bf16 model in test_bnb_linear4bit.py::test_bf16_eval_kernel. Here
    the cross-library comparison keeps bnb on its float32 path (dequantize + F.linear), as on other CPUs.
    Every in_features of the tiny Llama is a multiple of 64, so bnb's AVX-512 dequantization is exact too."""
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            assert m.in_features % 64 == 0
            m.support_avx512bf16_for_cpu = False


def _assert_same_logits(ours, theirs, ids, kind):
    """int8: eval() is LLM.int8 in both, bit-identical (in train() bnb CPU drops the decomposition, edgequant
    keeps it). nf4: train() runs the definition path in both (dropout is 0 here), bit-identical; eval() runs
    edgequant's tiled BLAS kernel: equal up to float32 summation order."""
    with torch.no_grad():
        if kind == "int8":
            assert torch.equal(ours.eval()(ids).logits, theirs.eval()(ids).logits)
            return
        ours.train()
        theirs.train()
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
        ours.eval()
        theirs.eval()
        _pin_bnb_4bit_to_float32_path(theirs)
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)
