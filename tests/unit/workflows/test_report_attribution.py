"""The report's error-attribution section from a results document built in code: one figure per attributed
candidate, the critical path shaded, the advice naming the top layers and tensor kinds; an entry of another
version is ignored; the page stays self-contained."""

from __future__ import annotations

import json
import re

from markupsafe import escape

from edgequant.workflows import report as rp
from tests.unit.workflows.test_report import make_doc

# (unit, isolated, increment): increments 0.001 + 0.006 + 0.001 + 0.02 + 0.001 + 0.011 = 0.04
UNITS = [
    ("token_embd", 0.001, 0.001),
    ("blk.0", 0.005, 0.006),
    ("blk.1", 0.001, 0.001),
    ("blk.2", 0.012, 0.02),
    ("blk.3", 0.001, 0.001),
    ("output", 0.01, 0.011),
]
KINDS = {"blk.2": {"attn_q": 1e-4, "ffn_down": 0.008, "attn_v": 0.002}, "blk.0": {"attn_k": 0.004}}


def attribution(total: float = 0.04) -> dict:
    units, cum = [], 0.0
    for name, iso, inc in UNITS:
        cum += inc
        kinds = KINDS.get(name, {})
        top = max(kinds, key=kinds.get) if kinds else None
        units.append({"name": name, "tensors": [], "isolated": iso, "cumulative": cum, "increment": inc})
        units[-1] |= {"kinds": kinds, "top_kind": top}
    iso = sum(u[1] for u in UNITS)
    return {
        "settings": {"version": 1},
        "units": units,
        "total": total,
        "isolated_sum": iso,
        "interaction": total - iso,
        "share": 0.8,
        "critical_path": ["blk.0", "blk.2", "output"],  # 0.037 of 0.04
        "path_share": 0.037 / 0.04,
        "n_tokens": 254,
        "forwards": 40.0,
        "seconds": 12.0,
        "n_ctx": 256,
        "n_chunks": 2,
        "backend": "torch+ggml-rounding",
    }


def _page(tmp_path, doc) -> tuple[dict, str]:
    (tmp_path / "r.json").write_text(json.dumps(doc))
    summary = rp.write_report(str(tmp_path / "r.json"), str(tmp_path / "r.html"))
    return summary, (tmp_path / "r.html").read_text(encoding="utf-8")


def test_attribution_figure_and_advice(tmp_path):
    doc = make_doc()
    doc["attribution"] = {"version": 1, "candidates": {"Q4_K_M": attribution(), "Q2_K": attribution(0.04)}}
    summary, html = _page(tmp_path, doc)
    pct = f"{100 * 0.037 / 0.04:.0f}%"
    assert pct in ("92%", "93%")
    assert summary["figures"] == html.count("<svg") == 5  # curve, heatmap, 2 attributions, speed
    assert 'id="attribution"' in html
    assert f"Q4_K_M: per-layer error attribution (total 0.04; shaded: critical path, {pct})" in html
    advice = rp.attribution_advice("Q4_K_M", attribution())
    assert advice.startswith(f"Q4_K_M: 3 of 6 layers make up {pct} of the mean KLD (0.04 in PyTorch)")
    assert "the largest increments: blk.2, output, blk.0." in advice
    assert "blk.2 (ffn_down, 0.008 alone), blk.0 (attn_k, 0.004 alone)" in advice
    assert "isolated KLDs sum to 0.03: the errors compound (the whole is worse than the sum) by 0.01" in (
        advice
    )
    assert str(escape(advice)) in html  # autoescaped: "layers'" is &#39;
    assert html.count("<li>Q4_K_M: 3 of 6 layers") == 1  # also in the advice list
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)


def test_no_or_other_version_attribution_is_not_drawn(tmp_path):
    doc = make_doc(sensitivity=False)
    summary, html = _page(tmp_path, doc)
    assert summary["figures"] == 2
    assert "edgequant evaluate --attribution</code> adds it" in html
    doc["attribution"] = {"version": 2, "candidates": {"Q4_K_M": attribution()}}
    assert _page(tmp_path, doc)[0]["figures"] == 2
    a = attribution()
    a["critical_path"], a["path_share"] = [], 0.0
    assert rp.attribution_advice("X", a) == "X: no measurable KLD to attribute."
