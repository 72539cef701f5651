"""edgequant evaluate on a tiny llama (HF -> F32 GGUF in code) measured in llama.cpp: the record of each
candidate, resuming, and the refusals (another model's results, another version, a missing text)."""

from __future__ import annotations

import json

import pytest

from edgequant.errors import ConfigError
from edgequant.workflows import evaluate as ev

pytest.importorskip("llama_cpp", reason="evaluate measures in llama.cpp (llama-cpp-python)")

OPTS = {
    "ftypes": ("Q8_0", "Q4_0"),
    "n_ctx": 64,
    "n_chunks": 3,
    "threads": 1,  # one thread: on a busy machine two ggml threads spin-wait for each other
    "n_prompt": 64,
    "n_gen": 8,
    "fit_ctx": 256,
    "sensitivity": True,
    "sensitivity_types": ("Q4_0", "Q8_0"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgequant.models.convert import convert_hf_to_gguf
    from tests.support.tiny import TRAIN_TEXT, write_tiny_hf

    d = tmp_path_factory.mktemp("evaluate")
    model = str(d / "tiny-F32.gguf")
    convert_hf_to_gguf(
        write_tiny_hf(str(d / "hf"), "llama", "bpe", init_std=0.05), model, "F32", verify=False
    )
    (d / "prose.txt").write_text(TRAIN_TEXT * 12)
    (d / "code.txt").write_text("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 40)
    texts = {"eval_text": str(d / "prose.txt"), "calibration_text": str(d / "prose.txt")}
    opts = ev.EvalOptions(**OPTS, **texts, shifted_text=str(d / "code.txt"))
    out = str(d / "results.json")
    return model, out, opts, ev.run_evaluate(model, out, opts), d


def test_every_candidate_is_measured(tiny):
    model, out, _, doc, _ = tiny
    assert [r["label"] for r in doc["candidates"]] == ["Q8_0", "Q4_0", "Q4_0+imatrix"]  # no Q8_0+imatrix
    assert json.load(open(out))["candidates"] == doc["candidates"]
    assert doc["format"] == ev.FORMAT
    assert doc["version"] == ev.VERSION
    assert doc["model"]["sha256"] == ev.file_sha256(model)
    assert doc["model"]["n_layer"] == 2
    by = {r["label"]: r for r in doc["candidates"]}
    for r in doc["candidates"]:
        for text in ("eval", "shifted"):
            q = r["quality"][text]
            assert 0 < q["mean_kld"] <= q["kld_99"] <= q["kld_999"], (r["label"], text)
            assert 0 < q["same_top_fraction"] <= 1
            assert q["n_scored_tokens"] == 3 * 31
        rt = r["runtime"]
        assert rt["prompt_tokens_per_s"] > 0
        assert rt["gen_tokens_per_s"] > 0
        assert rt["ttft_s"] > 0
        assert rt["rss_growth_bytes"] > 0
        assert rt["compute_bytes"] > 0
        assert rt["threads"] == 1
        assert r["bpw"] == pytest.approx(8 * r["tensor_bytes"] / r["n_params"])
    assert by["Q8_0"]["bpw"] > 8 > by["Q4_0"]["bpw"] > 4
    assert by["Q8_0"]["quality"]["eval"]["mean_kld"] < by["Q4_0"]["quality"]["eval"]["mean_kld"]
    assert doc["base"]["quality"]["eval"]["ppl"] > 1
    assert doc["base"]["bpw"] == pytest.approx(32, rel=1e-3)
    sens = doc["sensitivity"]["tensors"]
    assert len(sens) == 16  # 2 layers x 7 matrices, token_embd, output
    assert all(t["loss"]["Q4_0"] > t["loss"]["Q8_0"] for t in sens.values())


def test_resume_skips_what_is_there(tiny, monkeypatch):
    model, out, opts, doc, _ = tiny
    monkeypatch.setattr(ev._Job, "prepare", lambda *a: pytest.fail("nothing should be measured again"))
    again = ev.run_evaluate(model, out, opts)
    assert again["skipped"] == ["Q8_0", "Q4_0", "Q4_0+imatrix"]
    assert again["candidates"] == doc["candidates"]


def test_new_settings_or_ftypes_are_measured(tiny, monkeypatch):
    model, out, opts, _, _ = tiny
    done = []
    monkeypatch.setattr(ev._Job, "prepare", lambda *a: None)
    monkeypatch.setattr(ev._Job, "candidate", lambda self, c, s: done.append(c.label))
    monkeypatch.setattr(ev._Job, "sensitivity", lambda *a: done.append("sensitivity"))
    ev.run_evaluate(model, out, ev.EvalOptions(**{**opts.__dict__, "ftypes": ("Q8_0", "Q5_0")}))
    assert done == ["Q5_0", "Q5_0+imatrix"]
    done.clear()
    ev.run_evaluate(model, out, ev.EvalOptions(**{**opts.__dict__, "n_chunks": 2}))
    assert done == ["Q8_0", "Q4_0", "Q4_0+imatrix", "sensitivity"]


def test_results_of_another_model_are_refused(tiny, tmp_path):
    from tests.support.tiny import write_tiny_llama

    _, out, opts, _, _ = tiny
    other = write_tiny_llama(str(tmp_path / "other.gguf"), n_layer=3)
    with pytest.raises(ConfigError, match=r"results of another model, tiny-F32.gguf \(llama, 2 layers") as e:
        ev.run_evaluate(other, out, opts)
    assert "\n" not in str(e.value)


def test_another_version_or_format_is_refused(tiny, tmp_path):
    model, out, opts, _, _ = tiny
    doc = json.load(open(out))
    p = tmp_path / "v2.json"
    p.write_text(json.dumps({**doc, "version": 2}))
    with pytest.raises(ConfigError, match="version 2, this edgequant reads version 1"):
        ev.run_evaluate(model, str(p), opts)
    p.write_text(json.dumps({"format": "edgequant-candidates", "version": 1}))
    with pytest.raises(ConfigError, match="not an edgequant evaluation results file"):
        ev.read_results(str(p))


def test_missing_text_is_one_line_before_any_work(tiny, tmp_path, monkeypatch):
    model, _, opts, _, d = tiny
    monkeypatch.setattr(ev._Job, "prepare", lambda *a: pytest.fail("work started"))
    bad = ev.EvalOptions(**{**opts.__dict__, "shifted_text": str(d / "nope.txt")})
    with pytest.raises(ConfigError, match=r"cannot read text file .*nope.txt: No such file") as e:
        ev.run_evaluate(model, str(tmp_path / "r.json"), bad)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r.json").exists()
