"""Round matmul inputs as llama.cpp's CPU backend does, so a GGUF runs in PyTorch with llama.cpp's numerics.

ggml's CPU matmul does not multiply a quantized weight by float activations: it first converts each
activation row to the weight type's ``vec_dot_type`` and takes integer dot products (``ggml-cpu.c``
``type_traits_cpu``). That rounding is part of what a quantized file costs at run time (on SmolLM2 it moves
perplexity by 0.2-0.7 %), so edgequant's torch backend reproduces it for GGUF inputs:

==================================================  =================================================
weight type                                         activations become
==================================================  =================================================
Q4_0, Q5_0, Q8_0, IQ4_NL                            Q8_0: per 32 values ``d = amax/127`` stored fp16,
                                                    ``q = round_half_even(x * 127/amax)``, x' = q*d
Q4_1, Q5_1                                          Q8_1: the same values as Q8_0 (its extra sum
                                                    term does not change x')
Q2_K .. Q6_K, IQ4_XS                                Q8_K: per 256 values ``m`` = signed max-|x|,
                                                    ``iscale = -127/m``, ``q = min(127, nearest_int(
                                                    iscale*x))``, x' = q / iscale (f32)
F16 / BF16                                          x rounded to fp16 / bf16
F32                                                 unchanged
==================================================  =================================================

The product is then taken in float32 with the dequantized weights, which equals ggml's integer dot
product up to float32 summation order.

How close can the two runtimes get? Rounding activations makes the network discontinuous: a value
that lands one float32 ulp on the other side of a rounding boundary moves by a whole quantization step,
and such flips cascade through the layers. Measured on SmolLM2 Q8_0 (ctx 128, 127 positions): scaling
one RMSNorm weight vector by (1 + 1.2e-7) changes the logits of this torch model by RMS 0.32 (top token
changed at 5.6 % of positions) with rounding on, and by < 1e-4 with it off. That is the size of the
torch-vs-llama.cpp difference on quantized files (RMS 0.30 for Q8_0, 0.29 for Q4_0; 0.006 for the F32
file), whose summation orders differ by such ulps. So per-position logits of a quantized file cannot
agree closely between runtimes; what agrees is the statistics: the per-token log-loss difference is
zero-mean noise (sd ~0.1 nats on SmolLM2), so the perplexity difference shrinks as 0.1/sqrt(tokens)
(Q4_0, ctx 512 x 4 chunks, 1020 tokens: -0.11 %; with 126 tokens it was +3.7 %). Evaluate >= ~1000
tokens before reading a sub-percent difference.

Attention (llama.cpp without flash attention, its default in llama-cpp-python): K and V live in an F16
cache, so ``K^T Q`` is taken with K and Q rounded to fp16 (``vec_dot_type`` of F16 is F16), softmax in
float32, and ``V . softmax`` with the probabilities rounded to fp16. ``install(..., attention=True)``
registers that as the model's attention function ("ggml_f16_kv"); it is off by default because it does
not bring the runtimes measurably closer (Q4_0, ctx 512 x 4: -0.26 % with it, -0.11 % without; F32
logits RMS difference 0.0064 with it, 0.0059 without): its effect is below the noise above.
"""

from __future__ import annotations

import os

import torch

from edgequant.eval.imatrix_collect import gguf_weight_name

_Q8_0 = ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "Q4_1", "Q5_1")
_Q8_K = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")


def round_q8_0(x: torch.Tensor) -> torch.Tensor:
    """x -> dequantize(quantize_q8_0(x)) along the last dim (a multiple of 32), float32."""
    shape = x.shape
    b = x.float().reshape(-1, 32)
    amax = b.abs().amax(1, keepdim=True)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))  # true division
    d = (amax / 127.0).half().float()
    return (torch.round(b * inv) * d).reshape(shape)


def round_q8_k(x: torch.Tensor) -> torch.Tensor:
    """x -> dequantize(quantize_q8_K(x)) along the last dim (a multiple of 256), float32."""
    shape = x.shape
    b = x.float().reshape(-1, 256)
    idx = b.abs().argmax(1, keepdim=True)  # first max-|x| element, as ggml's strict '>' scan
    m = b.gather(1, idx)
    # ``scalar / tensor`` is reciprocal-times-scalar in torch (1 ulp off); divide tensors instead
    iscale = torch.where(m != 0, torch.full_like(m, -127.0) / m, torch.zeros_like(m))
    q = torch.clamp(torch.round(b * iscale), max=127.0)
    d = torch.where(m != 0, torch.ones_like(m) / iscale, torch.zeros_like(m))
    return (q * d).reshape(shape)


def rounding_for(type_name: str, n_in: int):
    """The input rounding function for a weight of ``type_name`` with rows of ``n_in`` (None: none)."""
    if type_name in _Q8_0 and n_in % 32 == 0:
        return round_q8_0
    if type_name in _Q8_K and n_in % 256 == 0:
        return round_q8_k
    if type_name == "F16":
        return lambda x: x.half().float()
    if type_name == "BF16":
        return lambda x: x.bfloat16().float()
    return None


def gguf_weight_types(path: str | os.PathLike) -> dict[str, str]:
    """{tensor name: type name} of a GGUF file."""
    from edgequant.gguf.reader import GGUFFile

    with GGUFFile(os.fspath(path)) as r:
        return {t.name: t.type_name for t in r.tensors}


def _f16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def ggml_f16_kv_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Causal attention of one sequence as llama.cpp's CPU path computes it with an F16 KV cache."""
    groups = query.shape[1] // key.shape[1]
    k = _f16(key).repeat_interleave(groups, dim=1)
    v = _f16(value).repeat_interleave(groups, dim=1)
    w = torch.matmul(_f16(query), k.transpose(2, 3)) * scaling
    n_q, n_k = w.shape[-2], w.shape[-1]
    causal = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    w = w.masked_fill(~causal, float("-inf"))
    p = _f16(torch.softmax(w, dim=-1, dtype=torch.float32))
    return torch.matmul(p, v).transpose(1, 2).contiguous(), None


def _use_ggml_attention(model) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("ggml_f16_kv", ggml_f16_kv_attention)
    model.set_attn_implementation("ggml_f16_kv")


def install(model, gguf_path: str | os.PathLike, attention: bool = False) -> list:
    """Round every linear's inputs as llama.cpp would for ``gguf_path``; with ``attention``, also use
    llama.cpp's F16-KV attention arithmetic. Returns the hook handles."""
    if attention:
        _use_ggml_attention(model)
    types = gguf_weight_types(gguf_path)
    handles = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        g = gguf_weight_name(name)
        if g == "output.weight" and g not in types:
            g = "token_embd.weight"  # tied output head
        fn = rounding_for(types.get(g, "F32"), mod.in_features) if g else None
        if fn is not None:
            handles.append(mod.register_forward_pre_hook(lambda _m, inp, fn=fn: (fn(inp[0]), *inp[1:])))
    return handles
