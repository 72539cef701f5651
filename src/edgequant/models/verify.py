"""Post-conversion check: llama.cpp's logits on the written GGUF against transformers' on the HF model.

Both run the same token ids (llama.cpp's tokenization of ``CHECK_PROMPTS``, BOS as the GGUF says) in one
forward pass each; llama.cpp through llama-cpp-python (``logits_all=True``), transformers in float32.
Reported per run: ``max_abs_diff`` (max |Δlogit| over all positions and the vocabulary), ``rel_diff``
(that divided by max |HF logit|, so one tolerance serves tiny random models and real ones), and
``top1_agreement`` (fraction of positions whose arg-max token agrees).

Tolerances on ``rel_diff`` of llama.cpp against the GGUF's own dequantized weights run in transformers
(``vs_dequantized``, which isolates the conversion from the chosen quantization error), and why:

* F32 0.01: llama.cpp keeps the KV cache in F16 and sums in another order. Measured 1.0e-3 on the tiny
  random llama/mistral/qwen2 models and 6.5e-4 (0.025 / 38.6) on SmolLM2-135M.
* F16 / BF16 0.03: F16 activations in the F16 matmuls; measured 2e-3 (F16) and 1.1e-2 (BF16).
* every quantized ftype 0.12: llama.cpp quantizes the activations to Q8_0/Q8_K for quantized matmuls;
  measured 0.03-0.055 on the tiny random models (their activations are large), Q2_K through Q8_0.

A wrong rope layout, swapped or mis-mapped tensors or a wrong norm epsilon give a relative difference
of order 1. Top-1 agreement must reach ``MIN_TOP1`` = 0.85 (measured >= 0.917). For F32/F16/BF16 the same
bounds also apply against the original HF model (``vs_hf``); for quantized ftypes ``vs_hf`` is reported
only, since it measures the quantization itself (e.g. Q2_K rel ~1.0 on random tiny models).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from edgequant.errors import VerificationError  # re-exported: callers catch it from here or errors

CHECK_PROMPTS = (
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Hello! How are you today? I'm fine, thanks; and you?",
)
TOLERANCES = {"F32": 0.01, "F16": 0.03, "BF16": 0.03}
QUANTIZED_TOLERANCE = 0.12
MIN_TOP1 = 0.85
STRICT_TOP1 = ("F32", "F16", "BF16")


def llama_cpp_logits(gguf_path: str, prompts=CHECK_PROMPTS) -> tuple[list[list[int]], list[np.ndarray]]:
    """(token ids, float32 logits [n_tokens, n_vocab]) per prompt, from llama.cpp."""
    import llama_cpp

    llm = llama_cpp.Llama(gguf_path, logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    try:
        add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
        ids, logits = [], []
        for p in prompts:
            toks = llm.tokenize(p.encode(), add_bos=bool(add_bos), special=False)
            llm.reset()
            llm.eval(toks)
            ids.append(list(toks))
            logits.append(np.array(llm.scores[: len(toks)], dtype=np.float32))
        return ids, logits
    finally:
        llm.close()


def hf_logits(model, ids: list[list[int]]) -> list[np.ndarray]:
    import torch

    out = []
    with torch.no_grad():
        for toks in ids:
            out.append(model(torch.tensor([toks])).logits[0].float().numpy())
    return out


def compare_logits(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """max_abs_diff, rel_diff, top1_agreement over all prompts (``ref`` = the HF model)."""
    diff = max(float(np.abs(r - g).max()) for r, g in zip(ref, got, strict=True))
    scale = max(float(np.abs(r).max()) for r in ref)
    agree = np.concatenate([r.argmax(-1) == g.argmax(-1) for r, g in zip(ref, got, strict=True)])
    return {
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "rel_diff": diff / max(scale, 1e-12),
        "top1_agreement": float(agree.mean()),
        "n_positions": int(agree.size),
    }


def verify_conversion(hf_dir: str, gguf_path: str, ftype: str) -> dict:
    """Run the check; returns the report (``status`` "ok" or "skipped"); VerificationError on disagreement.

    Two comparisons on llama.cpp's logits: ``vs_hf`` against the original HF model (quantization error
    included) and ``vs_dequantized`` against the GGUF's own dequantized weights run in transformers (only
    llama.cpp's runtime rounding left: F16 KV cache, Q8 activations in quantized matmuls). The tolerance
    applies to ``vs_dequantized``, which isolates the conversion (names, rope layout, metadata) from the
    chosen quantization; float ftypes must also meet it against the HF model itself.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        return {"status": "skipped", "reason": "llama-cpp-python is not installed; verification was skipped"}
    import torch
    from transformers import AutoModelForCausalLM

    from edgequant.models.load import load_causal_lm, quiet_transformers

    ids, cpp = llama_cpp_logits(gguf_path)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, use_safetensors=True).eval()
    vs_hf = compare_logits(hf_logits(model, ids), cpp)
    del model
    model, _ = load_causal_lm(gguf_path)
    vs_deq = compare_logits(hf_logits(model, ids), cpp)
    del model
    tol = TOLERANCES.get(ftype, QUANTIZED_TOLERANCE)
    report = {
        "status": "ok",
        "ftype": ftype,
        "tolerance_rel": tol,
        "prompts": len(ids),
        "vs_hf": vs_hf,
        "vs_dequantized": vs_deq,
    }
    checked = [vs_deq] + ([vs_hf] if ftype in STRICT_TOP1 else [])
    for which in checked:
        if which["rel_diff"] > tol or which["top1_agreement"] < MIN_TOP1:
            name = (
                "the Hugging Face model" if which is vs_hf else "its own dequantized weights in transformers"
            )
            raise VerificationError(
                f"{gguf_path}: llama.cpp's logits disagree with {name}: max |Δ| {which['max_abs_diff']:.4g} "
                f"(relative {which['rel_diff']:.4g}, tolerance {tol} for {ftype}), top-1 agreement "
                f"{which['top1_agreement']:.3f} (minimum {MIN_TOP1}); the file was not written. Re-run with "
                "verify=False to keep it for inspection",
                option="verify=False",
            )
    return report
