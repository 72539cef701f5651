"""docs/exercises.md: each figure it shows is recomputed here from edgequant's code and must be on the page.

Each test computes the exercise with the library (and, where useful, a closed form written out here), checks
the result, then checks that the page shows that computed figure in the format the page uses. Nothing here
copies an answer from the page.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from edgequant.analysis.allocate import allocate
from edgequant.analysis.metrics import mse
from edgequant.analysis.propagation import accumulated_error
from edgequant.gguf.codecs import dequantize, get_codec, quantize
from edgequant.nn.linear8bit import llm_int8_forward, quantize_rows_int8
from edgequant.qat.config import QuantSpec
from edgequant.qat.quantizers import LSQQuantizer
from edgequant.qat.ste import fake_quant_ste

DOC = Path(__file__).resolve().parents[2] / "docs" / "exercises.md"


@pytest.fixture(scope="module")
def page() -> str:
    return DOC.read_text(encoding="utf-8")


def shown(page: str, *figures: str) -> None:
    for f in figures:
        assert f in page, f"docs/exercises.md does not show {f!r}"


def fmt_list(values, spec: str = "g") -> str:
    return "[" + ", ".join(format(float(v), spec) for v in values) + "]"


# ----- 1: LLM.int8
W1 = [0.1, 0.2, 15.5, 0.3, -0.1, 0.4]


def test_ex1_outlier_and_int8_codes(page):
    w = torch.tensor([W1])
    threshold = 6 * 0.15
    _, cols = llm_int8_forward(w, torch.eye(6, dtype=torch.int8), torch.ones(6), None, threshold=threshold)
    assert cols.tolist() == [2]
    inliers = w.masked_fill(w.abs() >= threshold, 0)
    codes, absmax = quantize_rows_int8(inliers)
    codes = codes[0].tolist()
    scaled = [v / max(abs(u) for i, u in enumerate(W1) if i != 2) * 127 for v in W1]
    # closed form: round half to even of the exact ratios; 0.2 / 0.4 * 127 = 63.5 -> 64
    expect = [round(v) for i, v in enumerate(scaled) if i != 2]
    assert [c for i, c in enumerate(codes) if i != 2] == expect
    assert codes[1] == 64
    assert scaled[1] == 63.5
    assert math.floor(63.5 + 0.5) == 64  # half away from zero agrees here
    w16 = inliers.half()
    scale = 127.0 / w16.abs().max().float()  # float32, as quantize_rows_int8 computes it
    in_f32 = (w16[0, 1].float() * scale).item()
    assert 63.5 < in_f32 < 64
    assert round(in_f32) == 64
    shown(page, f"{in_f32:.6f} in float32")
    shown(page, f"{threshold:g}", f"column: {cols.item()} ({W1[2]:g})", f"absmax is {float(absmax):.1f}")
    shown(page, "[" + ", ".join(format(v, "g") if i != 2 else "-" for i, v in enumerate(scaled)) + "]")
    shown(page, "**[" + ", ".join(str(c) if i != 2 else "FP16(15.5)" for i, c in enumerate(codes)) + "]**")
    shown(page, f"{statistics.stdev(W1):.4f}", f"{statistics.stdev([v for v in W1 if abs(v) < 0.9]):.4f}")


def test_ex1_tie_rule_is_half_to_even(page):
    row = torch.tensor([[62.5, 127.0]])
    code = quantize_rows_int8(row)[0][0, 0].item()
    assert code == round(62.5) == 62
    assert math.floor(62.5 + 0.5) == 63  # what half away from zero would give
    shown(page, f"A row [{row[0, 0].item():g}, {row[0, 1].item():g}]", f"gives\n  code {code} in edgequant")
    try:
        from bitsandbytes import functional as bnb_f
    except Exception:
        return
    assert bnb_f.int8_vectorwise_quant(row.half())[0][0, 0].item() == code
    shown(page, "bitsandbytes 0.50.2")


# ----- 2: Q4_0
X2 = [0.5, -0.3, 0.8, -0.6]


def test_ex2_q4_0_llama_cpp_and_book(page):
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = X2
    block = quantize(x, "Q4_0")
    assert block.shape == (1, get_codec("Q4_0").type_size) == (1, 18)
    d = float(block[0, :2].view(np.float16)[0])
    signed_max = max(X2, key=abs)
    assert d == float(np.float16(signed_max / -8))
    nib = [(int(block[0, 2 + j]) & 15) - 8 for j in range(4)]
    assert nib == [min(15, int(v / (signed_max / -8) + 8.5)) - 8 for v in X2]
    y = dequantize(block, "Q4_0", (1, 32))[0, :4]
    np.testing.assert_array_equal(y, np.float32(nib) * np.float32(d))
    d_book = max(abs(v) for v in X2) / 7
    q_book = [round(v / d_book) for v in X2]
    y_book = [q * d_book for q in q_book]
    err = float(((y - np.float32(X2)) ** 2).sum())
    err_book = sum((a - b) ** 2 for a, b in zip(y_book, X2, strict=True))
    assert err < err_book
    shown(page, f"{signed_max:g} / -8 = {signed_max / -8:g}", f"fp16: {d:.5g})")
    shown(page, *(f"{v:g} → {q}" for v, q in zip(X2, nib, strict=True)))
    shown(page, f"Decoded: {fmt_list(y, '.5g')}", f"decoded {fmt_list(y_book, '.5g')}")
    shown(page, f"{max(X2):g} / 7 = {d_book:.6f}")
    shown(page, *(f"{v:g} → {q} ({v / d_book:.4g})" for v, q in zip(X2, q_book, strict=True) if q != 7))
    shown(page, f"llama.cpp {err:.3g}", f"the book's rule {err_book:.2g}")


# ----- 3: STE
def test_ex3_ste(page):
    x = torch.tensor([3.4, -0.6, 10.4], requires_grad=True)
    xq = fake_quant_ste(x, torch.tensor(1.0), 0.0, 0, 10)
    xq.backward(torch.full((3,), 0.5))
    assert xq[0].item() == 3.0
    assert x.grad.tolist() == [0.5, 0.0, 0.0]
    shown(
        page, f"x_q = {xq[0].item():.1f}", f"∂L/∂x = **{x.grad[0].item():g}**", f"get {x.grad[1].item():.1f}"
    )


# ----- 4: MSE
def test_ex4_mse(page):
    ref, q = [[1.0, 2.0], [3.0, 4.0]], [[1.1, 1.9], [3.2, 3.8]]
    value = mse(ref, q)
    assert value == pytest.approx(
        sum((a - b) ** 2 for r, s in zip(ref, q, strict=True) for a, b in zip(r, s, strict=True)) / 4
    )
    shown(page, f"**{value:.3f}**")


# ----- 5: superblocks
def test_ex5_book_superblock_against_k_quants(page):
    book_bits = 16 + 8 * 8 + 2 * 32 * 6 + 6 * 32 * 4
    shown(
        page,
        f"{book_bits} bits",
        f"{book_bits / 256:g} bits/weight",
        f"{100 * book_bits / 4096:.2f}% of fp16",
    )
    rows = {"the book's": (book_bits // 8, 256)}
    for name in ("Q4_K", "Q5_K", "Q6_K"):
        c = get_codec(name)
        rows[name] = (c.type_size, c.block_size)
        assert c.block_size == 256
    # the layouts the page describes, added up
    assert rows["Q4_K"][0] == 2 + 2 + 12 + 256 // 2
    assert rows["Q5_K"][0] == rows["Q4_K"][0] + 256 // 8
    assert rows["Q6_K"][0] == 256 // 2 + 256 // 4 + 16 + 2
    for name, (nbytes, n) in rows.items():
        bpw = 8 * nbytes / n
        shown(page, f"| {name} | {nbytes} | {bpw:g} | {100 * bpw / 16:.2f} |")
    mix = (2 * get_codec("Q6_K").bits_per_weight + 6 * get_codec("Q4_K").bits_per_weight) / 8
    shown(page, f"averages {mix:.4f} bits/weight")


# ----- 6: LSQ
W6, G6 = [1.2, -0.8, 2.1, -1.5], [0.1, -0.2, 0.3, -0.1]


def test_ex6_lsq_init_and_step_gradient(page):
    q = LSQQuantizer(QuantSpec(bits=3, method="lsq", granularity="tensor"), "weight", (1, 4))
    w = torch.tensor([W6], requires_grad=True)
    q(w).backward(torch.tensor([G6]))
    qn, qp = q.qrange()
    assert (qn, qp) == (-4, 3)
    mean_abs = sum(abs(v) for v in W6) / 4
    s = 2 * mean_abs / math.sqrt(qp)
    assert q.step.item() == pytest.approx(s, rel=1e-6)
    v = [x / s for x in W6]
    terms = [round(u) - u for u in v]  # LSQ's dŵ/ds inside the range
    raw = sum(g * t for g, t in zip(G6, terms, strict=True))
    g = 1 / math.sqrt(4 * qp)
    assert q.step.grad.item() == pytest.approx(raw * g, rel=1e-5)
    assert w.grad[0].tolist() == pytest.approx(G6)
    shown(page, f"2 · {mean_abs:g} / √{qp} = **{s:.4f}**", f"v = w/s = {fmt_list(v, '.4g')}")
    shown(page, f"round(v) − v = {fmt_list(terms, '.4g')}", f"**{raw:.5f}**", f"1/√{4 * qp} =", f"{g:.5f}")
    shown(page, f"∂L/∂s = **{q.step.grad.item():.6f}**")


# ----- 7: allocation
CHOICES7 = [{4: (0.05, 40), 8: (0.01, 80)}, {4: (0.08, 30), 8: (0.02, 60)}, {4: (0.03, 20), 8: (0.005, 40)}]


def test_ex7_allocation(page):
    a = allocate(CHOICES7, 150)
    plans = [
        (
            sum(c[b][0] for c, b in zip(CHOICES7, bits, strict=True)),
            sum(c[b][1] for c, b in zip(CHOICES7, bits, strict=True)),
            bits,
        )
        for bits in itertools.product((4, 8), repeat=3)
    ]
    best = min(p for p in plans if p[1] <= 150)
    assert a.options == best[2]
    assert a.cost == best[1]
    assert a.loss == pytest.approx(best[0])
    book = (8, 4, 8)
    book_loss = sum(c[b][0] for c, b in zip(CHOICES7, book, strict=True))
    assert book_loss > a.loss
    shown(page, f"all {len(plans)}", f"loss {book_loss:.3f}")
    shown(page, "**" + "/".join(map(str, a.options)) + f" bits: {a.cost} MB, loss {a.loss:.3f}**")


# ----- 8: propagation
def test_ex8_accumulated_error_is_a_bound(page):
    norms = [2.0, 1.5, 1.2]
    r = accumulated_error(norms, [0.01, 0.02, 0.015])
    shown(page, "κ = (" + ", ".join(f"{k:.1f}" for k in r.kappas) + ")")
    shown(page, "variances (" + ", ".join(f"{v:.6f}" for v in r.variances) + ")")
    shown(page, f"total {r.total_variance:g}", f"σ_total = **{r.total_std:.5f}**")
    # kappa_1 bounds ||W3 W2||_2: for random matrices with those norms the product's norm is below it
    gen = torch.Generator().manual_seed(0)
    w2, w3 = (torch.randn(8, 8, generator=gen) for _ in range(2))
    w2, w3 = (
        w2 * (norms[1] / torch.linalg.matrix_norm(w2, 2)),
        w3 * (norms[2] / torch.linalg.matrix_norm(w3, 2)),
    )
    product = torch.linalg.matrix_norm(w3 @ w2, 2).item()
    assert product < r.kappas[0]
    shown(page, f"κ₁ = ‖W₂‖·‖W₃‖ = {r.kappas[0]:.1f}", "**upper bound**")
