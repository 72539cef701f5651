"""``edgequant evaluate --attribution`` and its report as a user runs them (subprocess, a tiny model converted
in code): the results key, resuming without recomputing, the report's figure, a one-line error for a label
that is not swept."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_evaluate_cli import _evaluate, run, tiny  # noqa: F401  (the module fixture)

pytest.importorskip("llama_cpp", reason="evaluate measures in llama.cpp (llama-cpp-python)")

ATTR = (
    "--ftypes",
    "Q4_0",
    "--no-imatrix",
    "--attribution",
    "--attribution-ctx",
    32,
    "--attribution-chunks",
    2,
)


def test_attribution_is_stored_resumed_and_drawn(tiny, tmp_path):  # noqa: F811
    model, text, _ = tiny
    out = tmp_path / "results.json"
    doc = json.loads(_evaluate(model, text, out, *ATTR, "--json").stdout)
    entry = doc["attribution"]
    assert entry["version"] == 1
    a = entry["candidates"]["Q4_0"]  # bare --attribution: Q4_K_M is not swept, the middle ftype is Q4_0
    assert [u["name"] for u in a["units"]][1:3] == ["blk.0", "blk.1"]
    assert sum(u["increment"] for u in a["units"]) == pytest.approx(a["total"], rel=1e-12)
    assert a["total"] > 0
    assert a["settings"]["n_ctx"] == 32
    assert a["critical_path"]
    again = _evaluate(model, text, out, *ATTR)
    assert "attribution Q4_0: mean KLD" in again.stdout
    assert "critical path" in again.stdout
    assert json.loads(out.read_text())["attribution"] == entry  # not measured again
    html = tmp_path / "report.html"
    summary = json.loads(run("report", out, "-o", html, "--json").stdout)
    assert summary["figures"] == 3  # curve, attribution, speed
    page = html.read_text()
    assert 'id="attribution"' in page
    assert "Q4_0: per-layer error attribution" in page


def test_a_label_not_swept_is_one_line(tiny, tmp_path):  # noqa: F811
    model, text, _ = tiny
    r = _evaluate(model, text, tmp_path / "r.json", "--ftypes", "Q4_0", "--attribution", "Q2_K", check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "attribution candidate 'Q2_K' is not swept" in r.stderr
    assert not (tmp_path / "r.json").exists()
