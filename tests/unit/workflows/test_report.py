"""edgequant report from a results document built in code: self-contained HTML (no network reference, inline
SVG figures, under 3 MB), the Pareto front, device advice by recommend's fit rule, escaping, refusals."""

from __future__ import annotations

import json
import re

import pytest

from edgequant.errors import ConfigError
from edgequant.workflows import report as rp
from edgequant.workflows.evaluate import FORMAT, VERSION
from edgequant.workflows.recommend import ModelShape
from edgequant.workflows.report_figures import heatmap_grid, pareto

SHAPE = {"arch": "llama", "n_layer": 4, "n_embd": 256, "n_vocab": 320, "n_head_kv": [2] * 4}
SHAPE |= {"key_length": 32, "value_length": 32}
MIB = 2**20
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _quality(kld: float, ppl: float) -> dict:
    return {
        "ppl": ppl,
        "ppl_uncertainty": 0.1,
        "delta_ppl": ppl - 10,
        "mean_kld": kld,
        "mean_kld_uncertainty": kld / 10,
        "same_top_fraction": 1 - kld,
        "mean_delta_p": -kld / 10,
        "rms_delta_p": kld,
        "n_scored_tokens": 1020,
        "kld_99": 5 * kld,
        "kld_999": 9 * kld,
    }


def _runtime(mib: float) -> dict:
    return {
        "threads": 2,
        "n_prompt": 512,
        "n_gen": 32,
        "prompt_tokens_per_s": 900 / mib,
        "gen_tokens_per_s": 90 / mib,
        "ttft_s": mib / 900 + mib / 90,
        "rss_growth_bytes": int((mib + 30) * MIB),
        "rss_tokens": 512,
        "fit_ctx": 4096,
        "llama_kv_bytes": 0,
        "compute_bytes": 100 * MIB,
        "output_bytes": MIB // 4,
        "file_bytes": int(mib * MIB),
        "load_average": 1.5,
        "cpus": 2,
    }


# (label, ftype, imatrix, bits per weight, mean KLD): Q4_0 (plain) is dominated by Q4_K_M+imatrix
CANDS = [
    ("Q8_0", "Q8_0", False, 8.5, 0.002),
    ("Q4_K_M", "Q4_K_M", False, 4.9, 0.05),
    ("Q4_0", "Q4_0", False, 5.0, 0.09),
    ("Q2_K", "Q2_K", False, 3.0, 0.5),
    ("Q4_K_M+imatrix", "Q4_K_M", True, 4.9, 0.03),
    ("Q2_K+imatrix", "Q2_K", True, 3.0, 0.3),
]
N_PARAMS = 1_500_000_000


def make_doc(label_suffix: str = "", sensitivity: bool = True) -> dict:
    settings = {"texts": {"eval": {"path": "/usr/share/common-licenses/GPL-3", "sha256": "x"}}, "n_ctx": 512}
    settings |= {"n_chunks": 4, "threads": 2, "n_prompt": 512, "n_gen": 32, "fit_ctx": 4096}
    rows = []
    for label, ftype, imx, bpw, kld in CANDS:
        nbytes = int(bpw * N_PARAMS / 8)
        row = {"label": label + label_suffix, "method": "ftype+imatrix" if imx else "ftype", "ftype": ftype}
        row |= {"imatrix": imx, "settings": settings, "file_bytes": nbytes + 4096, "tensor_bytes": nbytes}
        row |= {"n_params": N_PARAMS, "bpw": bpw, "type_counts": {ftype: 10}, "quantize_seconds": 1.0}
        row |= {"quality": {"eval": _quality(kld, 10 + 20 * kld)}, "runtime": _runtime(nbytes / MIB)}
        rows.append(row)
    doc = {"format": FORMAT, "version": VERSION, "shape": SHAPE, "candidates": rows}
    doc["model"] = {"file": "m.gguf", "name": "m", "sha256": "ab" * 32, "arch": "llama", "n_layer": 4}
    doc["model"] |= {"n_embd": 256, "n_vocab": 320, "n_params": N_PARAMS}
    doc["base"] = {"label": "F32", "settings": settings, "file_bytes": 4 * N_PARAMS, "bpw": 32.0}
    doc["base"] |= {"quality": {"eval": {"ppl": 10.0, "n_scored_tokens": 1020}}, "runtime": _runtime(3815)}
    if sensitivity:
        tensors = {
            f"blk.{i}.{k}.weight": {
                "n_params": 65536,
                "loss": {"Q4_0": 1e-3 * (i + 1) * (j + 1), "Q8_0": 1e-5},
            }
            for i in range(4)
            for j, k in enumerate(KINDS)
        }
        tensors["token_embd.weight"] = {"n_params": 81920, "loss": {"Q4_0": 0.5, "Q8_0": 2e-3}}
        doc["sensitivity"] = {
            "method": "fisher",
            "types": ["Q4_0", "Q8_0"],
            "seconds": 3.0,
            "tensors": tensors,
        }
    return doc


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    (d / "results.json").write_text(json.dumps(make_doc()))
    summary = rp.write_report(str(d / "results.json"), str(d / "report.html"))
    return summary, (d / "report.html").read_text(encoding="utf-8"), d


def test_page_is_self_contained_and_small(page):
    summary, html, _ = page
    assert summary["figures"] == html.count("<svg") == 3
    assert summary["bytes"] == len(html.encode()) < rp.MAX_BYTES
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", html, re.I)
    assert "<script" not in html
    assert "<?xml" not in html
    assert "<!DOCTYPE svg" not in html


def test_page_has_every_section(page):
    _, html, _ = page
    for anchor in ("curve", "table", "sensitivity", "speed", "devices", "advice"):
        assert f'id="{anchor}"' in html
    for label, *_ in CANDS:
        assert f">{label}<" in html
    assert "blk.3.ffn_down.weight" in html or "token_embd.weight" in html  # most sensitive tensors listed
    assert "load average during the speed\nmeasurements was 1.5-1.5 on 2 CPUs" in html


def test_pareto_front():
    pts = [(bpw, kld) for *_, bpw, kld in CANDS]
    assert [CANDS[i][0] for i in pareto(pts)] == ["Q2_K+imatrix", "Q4_K_M+imatrix", "Q8_0"]


def test_heatmap_grid_is_layers_by_kinds():
    layers, kinds, grid = heatmap_grid(make_doc()["sensitivity"]["tensors"], "Q4_0")
    assert layers == [0, 1, 2, 3]
    assert kinds == list(KINDS)
    assert grid[3][6] == pytest.approx(-3 + 1.4471580313422192)  # log10(1e-3 * 4 * 7)


def test_device_table_uses_recommends_fit_rule():
    doc = make_doc()
    shape = ModelShape(**{**SHAPE, "n_head_kv": (2,) * 4})
    kv = shape.kv_bytes(4096)
    rows = {r["memory_gb"]: r for r in rp.device_table(doc)}
    # weights + KV + compute + output: Q4_K_M+imatrix needs 0.92e9 + 105 MiB > 1 GB, Q2_K+imatrix fits
    need = {lbl: int(bpw * N_PARAMS / 8) + kv + 100 * MIB + MIB // 4 for lbl, _, _, bpw, _ in CANDS}
    assert rows[1]["choice"] == "Q2_K+imatrix"
    assert rows[1]["needs_mib"] == pytest.approx(need["Q2_K+imatrix"] / MIB)
    assert rows[2]["choice"] == "Q8_0"
    assert rows[16]["choice"] == "Q8_0"
    assert rows[2]["rule_of_thumb"] == "Q4_0 or Q4_K_S"
    small = rp.device_table(doc, (0,))[0]
    assert small["choice"] is None
    assert small["smallest_needs_mib"] == pytest.approx(min(need.values()) / MIB)


def test_advice_names_choice_qat_and_imatrix():
    text = " ".join(rp.advice(make_doc(), rp.device_table(make_doc())))
    assert "1 GB: Q2_K+imatrix" in text
    assert "Q2_K, Q2_K+imatrix: mean KLD above 0.1" in text
    assert "quantization-aware training" in text
    assert "The imatrix helps most at Q2_K: 1.67x lower mean KLD" in text


def test_labels_are_escaped(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(make_doc(label_suffix="<img src=x>", sensitivity=False)))
    rp.write_report(str(p), str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert "<img" not in html
    assert "&lt;img src=x&gt;" in html
    assert "Not measured" in html  # no sensitivity table: said so, no heatmap


def test_bad_results_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"results file .*nope.json does not exist"):
        rp.write_report(str(tmp_path / "nope.json"), str(tmp_path / "r.html"))
    p = tmp_path / "old.json"
    p.write_text(json.dumps({**make_doc(), "version": 0}))
    with pytest.raises(ConfigError, match="results format version 0, this edgequant reads version 1") as e:
        rp.write_report(str(p), str(tmp_path / "r.html"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r.html").exists()
