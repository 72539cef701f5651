"""Sensitivity collection, budget planning and the plan file on a tiny llama (HF -> F32 GGUF in code)."""

from __future__ import annotations

import json
import os

import pytest

from edgequant.errors import ConfigError
from edgequant.gguf.ftypes import QuantizeOptions
from edgequant.gguf.reader import GGUFFile
from edgequant.workflows.allocate import (
    feasible_range,
    parse_size,
    plan_budget,
    plan_patterns,
    tensor_names,
    write_plan,
)
from edgequant.workflows.quantize import quantize_model
from edgequant.workflows.sensitivity import collect_sensitivities, parse_types

TYPES = "Q2_K,Q4_K,Q6_K,Q8_0,Q4_0,Q5_0"
TEXT = " ".join(f"the cat {i % 7} sat on mat {i % 5} and the dog ran {i % 3} times" for i in range(200))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from edgequant.models.convert import convert_hf_to_gguf
    from tests.support.tiny import write_tiny_hf

    d = tmp_path_factory.mktemp("alloc")
    hf = write_tiny_hf(str(d / "hf"), "llama", "bpe", init_std=0.05)
    out = str(d / "tiny-F32.gguf")
    convert_hf_to_gguf(hf, out, "F32")
    return out


@pytest.fixture(scope="module")
def table(model, tmp_path_factory):
    state = str(tmp_path_factory.mktemp("state") / "table.json")
    return collect_sensitivities(model, TEXT, types=TYPES, n_ctx=64, n_chunks=3, draws=3, state=state)


def test_parse_size():
    assert parse_size("5m") == 5_000_000
    assert parse_size("4GiB") == 4 * 2**30
    assert parse_size("1.5kib") == 1536
    assert parse_size("1234") == 1234
    with pytest.raises(ConfigError, match="unit"):
        parse_size("5 parsecs")


def test_unknown_type_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown or non-quantizable tensor type 'q9_k'; known: .*Q4_K"):
        parse_types("q4_k,q9_k")


def test_table_covers_every_quantizable_tensor(model, table):
    with GGUFFile(model) as r:
        eligible = [t.name for t in r.tensors if len(t.shape_ne) == 2]
    assert sorted(t.name for t in table.tensors) == sorted(eligible)
    for t in table.tensors:
        assert set(t.loss) == set(t.bytes) == set(TYPES.split(","))
        # the same tensor at 8 bits moves the output less than at 2 bits, by orders of magnitude
        assert t.loss["Q8_0"] < t.loss["Q4_K"] < t.loss["Q2_K"], t.name
        assert t.bytes["Q2_K"] < t.bytes["Q4_K"] < t.bytes["Q6_K"] < t.bytes["Q8_0"]


def test_state_is_reused_and_matches(model, table, tmp_path, monkeypatch):
    import edgequant.workflows.sensitivity as sens

    state = tmp_path / "t.json"
    state.write_text(table.to_json())
    monkeypatch.setattr(sens, "_run_model", lambda *a: pytest.fail("the saved table was not reused"))
    kw = {"types": TYPES, "n_ctx": 64, "n_chunks": 3, "draws": 3}
    assert collect_sensitivities(model, TEXT, state=state, **kw).to_json() == table.to_json()
    with pytest.raises(BaseException, match="not reused"):  # other settings: collected anew
        collect_sensitivities(model, TEXT, state=state, **{**kw, "draws": 2})
    monkeypatch.undo()
    again = collect_sensitivities(model, TEXT, types=TYPES, n_ctx=64, n_chunks=3, draws=3, state=None)
    # same seed, same samples: the same predictions
    a = {(t.name, k): v for t in table.tensors for k, v in t.loss.items()}
    b = {(t.name, k): v for t in again.tensors for k, v in t.loss.items()}
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-30) for k in a) < 1e-6


def test_fisher_ranks_like_the_measured_kl(model, table):
    from edgequant.analysis.metrics import spearman

    measured = collect_sensitivities(model, TEXT, types=TYPES, n_ctx=64, n_chunks=3, method="measured")
    m = {(t.name, k): v for t in measured.tensors for k, v in t.loss.items()}
    e = {(t.name, k): v for t in table.tensors for k, v in t.loss.items()}
    keys = sorted(m)
    assert spearman([m[k] for k in keys], [e[k] for k in keys]) > 0.9


def test_plan_meets_the_size_and_the_file_has_its_types(model, table, tmp_path):
    with pytest.raises(ConfigError, match="feasible range") as e:
        plan_budget(table, target_size=1)
    assert "outside the feasible range" in str(e.value)
    lo, hi = feasible_range(table)
    target = (lo + hi) // 2
    plan = plan_budget(table, target_size=target)
    assert plan.file_bytes <= target
    names = tensor_names(model)
    out = str(tmp_path / "planned.gguf")
    rep = quantize_model(
        model, out, "Q4_K_M", options=QuantizeOptions(tensor_types=tuple(plan_patterns(plan, names)))
    )
    assert rep.bytes_out <= target
    assert rep.bytes_out <= plan.file_bytes <= rep.bytes_out + 1024 + 32
    got = {t.name: t.new_type for t in rep.tensors}
    assert all(got[t.name] == t.type for t in plan.tensors)
    # a larger budget never predicts more loss
    bigger = plan_budget(table, target_size=(target + hi) // 2)
    assert bigger.predicted_kld <= plan.predicted_kld


def test_budget_is_filled_or_the_reason_given(table):
    lo, hi = feasible_range(table)
    for target in (lo + (hi - lo) // 3, (lo + hi) // 2, hi):
        plan = plan_budget(table, target_size=target)
        assert plan.used <= target
        if plan.used < 0.995 * target:
            assert plan.underfill is not None
        else:
            assert plan.underfill is None


def test_bpw_budget_and_infeasible_bpw(table):
    plan = plan_budget(table, target_bpw=5.0)
    assert plan.bits_per_weight <= 5.0
    with pytest.raises(ConfigError, match=r"target 1.0 bits/weight is outside the feasible range \d"):
        plan_budget(table, target_bpw=1.0)
    with pytest.raises(ConfigError, match="outside the feasible range"):
        plan_budget(table, target_bpw=40.0)


def test_plan_file_round_trip_and_unknown_tensor(model, table, tmp_path):
    plan = plan_budget(table, target_bpw=5.0)
    path = tmp_path / "plan.txt"
    write_plan(plan, path, tensor_names(model))
    lines = path.read_text().split()
    assert len(lines) == len(plan.tensors)
    for line, t in zip(lines, plan.tensors, strict=True):
        if t.name == "output.weight":  # as a regex it would also match blk.N.attn_output.weight: anchored
            assert line == rf"^output\.weight$={t.type.lower()}"
        else:
            assert line == f"{t.name}={t.type.lower()}"
    # edgequant's --tensor-type-file reader (llama-quantize's rules) gives back the plan
    from edgequant.cli.quantize import _tensor_types

    assert dict(_tensor_types([], str(path))) == {p: ty for p, ty in plan_patterns(plan, tensor_names(model))}
    bad = QuantizeOptions(tensor_types=(("blk.9.attn_q.weight", "Q8_0"),))
    with pytest.raises(ConfigError, match=r"'blk.9.attn_q.weight' matches no tensor"):
        quantize_model(model, str(tmp_path / "x.gguf"), "Q4_K_M", options=bad)
    assert not (tmp_path / "x.gguf").exists()


def test_row_width_rules(tmp_path):
    """A K-type on rows that are not a multiple of 256 is skipped with the reason."""
    from edgequant.workflows.sensitivity import candidate_table
    from tests.support.tiny import write_tiny_llama

    path = write_tiny_llama(str(tmp_path / "t.gguf"), width=96, ff=160, vocab=64)
    with GGUFFile(path) as r:
        t = candidate_table(r, parse_types("Q4_K,Q8_0"), has_imatrix=False)
    for tc in t.tensors:
        assert "Q4_K" in tc.skipped
        assert "not a multiple of Q4_K's block of 256" in tc.skipped["Q4_K"]
        assert list(tc.bytes) == ["Q8_0"]


def test_cli_allocate_then_quantize(model, table, tmp_path, capsys):
    from edgequant.cli.main import main

    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    plan = tmp_path / "plan.txt"
    state = tmp_path / "state.json"
    lo, hi = feasible_range(table)
    target = str((lo + hi) // 2)
    common = ["-f", str(text), "--types", TYPES.lower(), "--ctx", "64", "--chunks", "2", "--draws", "2"]
    assert (
        main(
            [
                "allocate",
                model,
                "--target-size",
                target,
                "-o",
                str(plan),
                "--state",
                str(state),
                "--json",
                *common,
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["file_bytes_upper_bound"] <= int(target)
    assert len(out["tensors"]) == len(plan.read_text().split())
    assert all("predicted_kld" in t and "bytes" in t for t in out["tensors"])
    dst = tmp_path / "q.gguf"
    assert (
        main(
            [
                "quantize",
                model,
                str(dst),
                "Q4_K_M",
                "--target-size",
                target,
                "--state",
                str(state),
                "--write-recipe",
                "--json",
                *common,
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["bytes_out"] <= int(target)
    with GGUFFile(str(dst)) as r:
        recipe = json.loads(r.get("edgequant.recipe"))
        types = {t.name: t.type_name for t in r.tensors}
    assert recipe["types"] == {t["name"]: t["type"] for t in out["tensors"]}
    assert all(types[k] == v for k, v in recipe["types"].items())
    # a plain quantize with the plan file gives the same tensors and no recipe key
    dst2 = tmp_path / "q2.gguf"
    assert main(["quantize", "--tensor-type-file", str(plan), model, str(dst2), "Q4_K_M"]) == 0
    with GGUFFile(str(dst2)) as r:
        assert r.get("edgequant.recipe") is None
        assert {t.name: t.type_name for t in r.tensors} == types


def test_cli_infeasible_budget_is_one_line(model, tmp_path, capsys):
    from edgequant.cli.main import main

    rc = main(
        [
            "allocate",
            model,
            "--target-size",
            "10k",
            "-o",
            str(tmp_path / "p.txt"),
            "--types",
            "q8_0",
            "--ctx",
            "64",
            "--chunks",
            "2",
            "--draws",
            "1",
            "-f",
            os.devnull,
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.txt").exists()
