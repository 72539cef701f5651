"""Run by tests/reference/test_bnb_dropin_transformers.py in a process of its own (the drop-in is for good).

``python bnb_dropin_transformers.py MODE OUT.pt``: builds a tiny Llama in code (seeded), saves it, loads it by
``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True, nf4, double quant))`` on CPU,
with MODE "bnb" (bitsandbytes itself) or "edgequant" (``edgequant.bnb.dropin`` functional + layers), and saves
the float logits, the packed weight, absmax codes and the classes seen to OUT.pt.
"""

from __future__ import annotations

import sys
import tempfile

import torch


def main(mode: str, out: str) -> None:
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    if mode == "edgequant":
        from edgequant.bnb import dropin

        dropin.substitute_functional()
        dropin.substitute_layers()
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        LlamaForCausalLM(cfg).save_pretrained(d)
        qcfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        model = LlamaForCausalLM.from_pretrained(d, quantization_config=qcfg, device_map="cpu")
    model.eval()
    lin = model.model.layers[0].self_attn.q_proj
    qs = lin.weight.quant_state
    x = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x).logits
    torch.save(
        {
            "logits": logits,
            "weight": lin.weight.data.clone(),
            "absmax": lin.weight.quant_state.absmax.clone(),
            "param_class": f"{type(lin.weight).__module__}.{type(lin.weight).__name__}",
            "state_class": f"{type(qs).__module__}.{type(qs).__name__}",
        },
        out,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
