"""The report's PyTorch-sweep section from a results document built in code: the figure, the table, the
advice sentence (smallest format within the KLD threshold; where asym beats sym); absent or of another
version, the section says how to add it."""

from __future__ import annotations

import json

from edgequant.workflows import report as rp
from tests.unit.workflows.test_report import make_doc

# (label, bpw, mean KLD)
ROWS = [
    ("rtn-w2-sym", 2.6, 0.9),
    ("rtn-w2-asym", 3.1, 0.4),  # asym beats sym at 2 bits
    ("rtn-w4-sym", 4.6, 0.02),
    ("rtn-w4-asym", 5.1, 0.03),
    ("rtn-w8-sym", 8.6, 0.0001),
    ("nf4", 4.6, 0.008),  # the smallest within 0.01
    ("int8", 8.7, 0.0002),
]


def torch_section(version: int = 1) -> dict:
    cands = []
    for label, bpw, kld in ROWS:
        q = {"ppl": 10 + kld, "mean_kld": kld, "kld_999": 10 * kld, "same_top_fraction": 1 - kld / 2}
        method = "torch:rtn" if label.startswith("rtn-") else "torch:bnb"
        cands.append(
            {"label": label, "method": method, "bpw": bpw, "bytes": int(bpw * 1e6), "quality": {"eval": q}}
        )
    layers = [{"module": f"model.layers.{i}", "ms": 1.0 + i, "alloc_bytes": 0} for i in range(3)]
    return {
        "version": version,
        "settings": {},
        "candidates": cands,
        "profiles": {"float": layers, "nf4": layers},
    }


def _page(tmp_path, doc) -> str:
    (tmp_path / "r.json").write_text(json.dumps(doc))
    rp.write_report(str(tmp_path / "r.json"), str(tmp_path / "r.html"))
    return (tmp_path / "r.html").read_text(encoding="utf-8")


def test_torch_figure_table_and_advice(tmp_path):
    doc = make_doc() | {"torch": torch_section()}
    html = _page(tmp_path, doc)
    assert 'id="torch"' in html
    assert html.count("<svg") == 4  # curve, heatmap, speed + the sweep
    for label, *_ in ROWS:
        assert f">{label}<" in html
    text = rp.torch_advice(doc["torch"])
    assert "nf4 (4.60 bits per weight)" in text
    assert "asym) beats a symmetric grid at 2 bits." in text
    assert text in html


def test_no_or_other_version_sweep_is_not_drawn(tmp_path):
    for doc in (make_doc(), make_doc() | {"torch": torch_section(version=2)}):
        html = _page(tmp_path, doc)
        assert html.count("<svg") == 3
        assert "edgequant evaluate --torch</code> adds it" in html
