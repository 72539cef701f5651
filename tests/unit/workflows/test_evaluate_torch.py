"""The PyTorch half of edgequant evaluate on a tiny llama built in code: the book's bits x {sym, asym} scan,
the bitsandbytes-style layers, their byte counts (closed forms), quality ordering and the layer profile."""

from __future__ import annotations

import contextlib

import pytest
import torch

from edgequant.errors import ConfigError
from edgequant.eval.text import Chunking
from edgequant.workflows import evaluate_torch as et


@contextlib.contextmanager
def _quiet(_name):
    yield lambda i, n, msg="": None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from tests.support.tiny import TRAIN_TEXT, write_tiny_hf

    d = tmp_path_factory.mktemp("evaluate_torch")
    hf = write_tiny_hf(str(d / "hf"), "llama", "bpe", init_std=0.05)
    (d / "prose.txt").write_text(TRAIN_TEXT * 12)
    records: dict[str, dict] = {}
    labels = et.torch_labels()
    et.run_torch_sweep(
        hf, {"eval": str(d / "prose.txt")}, Chunking(64, 3), 1, labels,
        lambda lbl: lbl in records, lambda r: records.__setitem__(r["label"], r), _quiet,
    )  # fmt: skip
    return hf, records, labels


def _float_model(hf):
    from edgequant.models import load_causal_lm

    return load_causal_lm(hf)[0]


def test_every_label_is_measured_once_and_resumes(sweep):
    hf, records, labels = sweep
    assert set(records) == set(labels) | {"float-profile"}
    calls = []
    et.run_torch_sweep(hf, {}, Chunking(64, 3), 1, labels, lambda lbl: True, calls.append, _quiet)
    assert calls == []  # everything done: nothing loaded, nothing saved


def test_rtn_bytes_follow_the_closed_form(sweep):
    hf, records, _ = sweep
    model = _float_model(hf)
    linears = [m for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lm_head" not in n]
    n_lin = sum(m.weight.numel() for m in linears)
    groups = sum(-(-m.in_features // et.GROUP) * m.out_features for m in linears)
    others = sum(p.numel() for p in model.parameters()) - n_lin  # embeddings, norms: 16 bits each
    for bits in et.SCAN_BITS:
        for kind, per_group in (("sym", 2), ("asym", 3)):
            r = records[f"rtn-w{bits}-{kind}"]
            assert r["bytes"] == (n_lin * bits + 7) // 8 + groups * per_group + 2 * others
            assert r["n_params"] == n_lin + others


def test_more_bits_lose_less(sweep):
    _, records, _ = sweep
    for kind in ("sym", "asym"):
        kld = [records[f"rtn-w{b}-{kind}"]["quality"]["eval"]["mean_kld"] for b in et.SCAN_BITS]
        assert kld == sorted(kld, reverse=True), (kind, kld)
        assert kld[-1] < 1e-3 < kld[0]
    assert records["int8"]["quality"]["eval"]["mean_kld"] < records["nf4"]["quality"]["eval"]["mean_kld"]


def test_bnb_bytes_are_the_layer_state(sweep):
    _, records, _ = sweep
    # double quantization stores 8-bit absmax (+ a small second-level state) instead of fp32 absmax
    assert records["nf4+dq"]["bytes"] < records["nf4"]["bytes"] == records["fp4"]["bytes"]
    assert records["nf4"]["bytes"] < records["int8"]["bytes"]
    assert all(records[k]["method"] == "torch:bnb" for k in et.BNB_CANDIDATES)


def test_profile_names_every_layer_and_linear(sweep):
    hf, records, _ = sweep
    model = _float_model(hf)
    n_layers = model.config.num_hidden_layers
    for label in ("float-profile", "nf4", "int8"):
        prof = records[label]["profile"]
        names = [p["module"] for p in prof]
        assert [n for n in names if n.count(".") == 2] == [f"model.layers.{i}" for i in range(n_layers)]
        assert len(names) == n_layers * 8  # the layer and its 7 projections
        assert all(p["ms"] > 0 for p in prof)


def test_unknown_candidate_is_refused(sweep):
    hf, _, _ = sweep
    with pytest.raises(ConfigError, match="unknown"):
        et.apply_candidate(_float_model(hf), "int3")


def test_evaluate_keeps_the_sweep_in_its_results_file(sweep, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="evaluate measures its ftypes in llama.cpp")
    from edgequant.models.convert import convert_hf_to_gguf
    from edgequant.workflows import evaluate as ev
    from tests.support.tiny import TRAIN_TEXT

    hf, records, _ = sweep
    gguf = str(tmp_path / "tiny-F32.gguf")
    convert_hf_to_gguf(hf, gguf, "F32", verify=False)
    (tmp_path / "prose.txt").write_text(TRAIN_TEXT * 12)
    monkeypatch.setattr(et, "torch_labels", lambda: ["rtn-w4-sym", "nf4"])
    opts = ev.EvalOptions(
        ftypes=("Q8_0",), imatrix=False, n_ctx=64, n_chunks=3, threads=1, n_prompt=64, n_gen=8, fit_ctx=256,
        eval_text=str(tmp_path / "prose.txt"), torch_sweep=True,
    )  # fmt: skip
    out = str(tmp_path / "results.json")
    doc = ev.run_evaluate(gguf, out, opts)
    section = doc["torch"]
    assert section["version"] == et.TORCH_VERSION
    assert [r["label"] for r in section["candidates"]] == ["rtn-w4-sym", "nf4"]
    assert set(section["profiles"]) == {"float", "nf4"}
    # the same model and text as the fixture's direct sweep: the same numbers
    for r in section["candidates"]:
        assert r["bytes"] == records[r["label"]]["bytes"]
        assert r["quality"]["eval"]["mean_kld"] == pytest.approx(
            records[r["label"]]["quality"]["eval"]["mean_kld"]
        )
    calls = []
    monkeypatch.setattr(et, "run_torch_sweep", lambda *a, **k: calls.append(a))
    ev.run_evaluate(gguf, out, opts)
    assert calls == []  # resumed: nothing left to measure
