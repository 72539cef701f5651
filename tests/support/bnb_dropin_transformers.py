"""Run by tests/reference/test_bnb_dropin_transformers.py in a process of its own (the drop-in is for good).

``python bnb_dropin_transformers.py MODE BITS OUT.pt``: builds a tiny Llama in code (seeded), saves it,
loads it by ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` on CPU -- BITS "4":
``load_in_4bit`` (nf4, double quant, float32 compute); BITS "8": ``load_in_8bit`` (threshold 6.0) --
with MODE "bnb" (bitsandbytes itself), "edgequant" (``edgequant.bnb.dropin``: functional + parameter
classes, bnb's layers) or "modules" (``edgequant.nn.bnb_dropin.substitute_modules()``: edgequant's layer
classes too), and saves the float logits, the weight and its scales (4-bit: packed bytes, absmax codes;
8-bit: int8 codes, SCB) and the classes seen to OUT.pt.
"""

from __future__ import annotations

import sys
import tempfile

import torch


def _substitute(mode: str) -> None:
    if mode == "edgequant":
        from edgequant.bnb import dropin

        dropin.substitute_functional()
        dropin.substitute_layers()
    elif mode == "modules":
        from edgequant.nn import bnb_dropin

        bnb_dropin.substitute_modules()


def _name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def main(mode: str, bits: str, out: str) -> None:
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    _substitute(mode)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    if bits == "4":
        qcfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    else:
        qcfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        LlamaForCausalLM(cfg).save_pretrained(d)
        model = LlamaForCausalLM.from_pretrained(d, quantization_config=qcfg, device_map="cpu")
    model.eval()
    lin = model.model.layers[0].self_attn.q_proj
    x = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x).logits
    result = {
        "logits": logits,
        "weight": lin.weight.data.clone(),
        "param_class": _name(lin.weight),
        "module_class": _name(lin),
    }
    if bits == "4":
        qs = lin.weight.quant_state
        result.update(absmax=qs.absmax.clone(), state_class=_name(qs))
    else:
        scb = lin.weight.SCB if lin.weight.SCB is not None else lin.state.SCB  # bnb moves it at forward
        result.update(scb=scb.clone(), state_class=_name(lin.state))
    torch.save(result, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
