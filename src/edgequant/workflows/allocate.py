"""Budget -> per-tensor types: ``plan_budget`` solves, ``write_plan`` writes the llama-quantize type file.

The loss of a plan is predicted by the additive model: the sum over tensors of the mean KL divergence each
tensor's chosen type adds alone (:mod:`edgequant.workflows.sensitivity`). ``plan_budget`` minimizes it under
the byte budget with :func:`edgequant.analysis.allocate` (exact multiple-choice knapsack by default).

Budgets, as llama.cpp's ``--target-bpw`` / ``--target-size`` (PR #15550) state them:

* ``target_bpw``: bits per weight of the tensor data, ``8 · Σ tensor bytes / Σ parameters`` over *all*
  tensors (what ``llama-quantize`` prints as BPW and :class:`QuantizeReport.bits_per_weight` computes);
  the tensors the plan does not choose (norms) count at their size.
* ``target_size``: bytes of the whole output file: its header (bounded above by the input's header plus
  1 KiB for the keys quantization adds) plus every tensor's data padded to the file's alignment. The written
  file is never larger than the target; the solver fills the budget to within the smallest useful step.

A budget outside ``[all tensors at their cheapest candidate, all at their best]`` is refused with the
feasible range. The plan file has one ``name=type`` per line with exact tensor names (a name is a regular
expression that only matches itself here; ``write_plan`` checks that, and anchors a name that would also
match another tensor); ``edgequant quantize --tensor-type-file`` and ``llama-quantize --tensor-type-file``
read it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from edgequant.analysis.allocate import allocate
from edgequant.core.atomic import atomic_write_bytes
from edgequant.errors import ConfigError
from edgequant.workflows.sensitivity import SensitivityTable

_UNITS = {"": 1, "b": 1, "k": 10**3, "kib": 2**10, "m": 10**6, "mib": 2**20, "g": 10**9, "gib": 2**30}
_UNITS |= {"t": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``N[b|k|kib|m|mib|g|gib|t|tib]`` -> bytes (case-insensitive; k/m/g/t decimal, *ib binary)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(
            f"size {text!r}: expected a number with an optional unit b, k, kib, m, mib, g, gib, t, tib "
            "(e.g. 120m, 4gib)",
            option="target_size",
        )
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass
class TensorPlan:
    name: str
    type: str
    bytes: int  # aligned data bytes in the output file
    loss: float  # predicted mean KL added by this tensor alone


@dataclass
class AllocationPlan:
    """The solved plan: one entry per chosen tensor in file order, totals, and what was asked."""

    tensors: list[TensorPlan]
    predicted_kld: float
    file_bytes: int  # upper bound of the output file size (exact but for the header's 1 KiB margin)
    tensor_nbytes: int  # Σ unaligned data bytes of every tensor (bits/weight numerator)
    n_params: int
    target: dict
    feasible: tuple[int, int]  # the budget range in the target's unit (bytes; for bpw, unaligned bytes)
    method: str
    optimal: bool
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    budget: int = 0  # in the target's unit (file bytes, or data bytes for bits/weight)
    used: int = 0  # the same total for the plan
    underfill: str | None = None  # why the plan uses under 99.5 % of the budget, when it does

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_nbytes / max(1, self.n_params)

    @property
    def types(self) -> dict[str, str]:
        return {t.name: t.type for t in self.tensors}


def plan_budget(
    table: SensitivityTable,
    *,
    target_bpw: float | None = None,
    target_size: int | None = None,
    method: str = "exact",
) -> AllocationPlan:
    """Solve the table for one budget (exactly one of ``target_bpw`` / ``target_size``)."""
    if (target_bpw is None) == (target_size is None):
        raise ConfigError("give exactly one of target_bpw and target_size", option="target_bpw")
    if not table.tensors:
        raise ConfigError(f"{table.model}: no quantizable tensors to allocate")
    by_size = target_size is not None
    choices, fixed = _choices(table, by_size)
    lo, hi = feasible_range(table, by_size)
    if by_size:
        budget, asked = int(target_size), f"target size {target_size} bytes"
        unit = lambda b: f"{b} bytes ({b / 2**20:.2f} MiB)"  # noqa: E731
    else:
        if not (target_bpw > 0):
            raise ConfigError(f"target_bpw must be positive, got {target_bpw}", option="target_bpw")
        budget = int(target_bpw * table.n_params / 8)
        asked = f"target {target_bpw} bits/weight"
        unit = lambda b: f"{8 * b / table.n_params:.4f} bits/weight"  # noqa: E731
    if not lo <= budget <= hi:
        raise ConfigError(
            f"{asked} is outside the feasible range {unit(lo)} .. {unit(hi)} for "
            f"{os.path.basename(table.model)} with types {', '.join(table.settings.get('types', []))}",
            option="target_size" if by_size else "target_bpw",
        )
    sol = allocate(choices, budget - fixed, method=method)
    tensors = [
        TensorPlan(tc.name, ty, tc.bytes[ty], tc.loss[ty])
        for tc, ty in zip(table.tensors, sol.options, strict=True)
    ]
    nbytes = table.fixed_nbytes + sum(tc.nbytes[t.type] for tc, t in zip(table.tensors, tensors, strict=True))
    return AllocationPlan(
        tensors=tensors,
        predicted_kld=float(sol.loss),
        file_bytes=table.header_bytes + table.fixed_bytes + sum(t.bytes for t in tensors),
        tensor_nbytes=nbytes,
        n_params=table.n_params,
        target={"bits_per_weight": target_bpw} if target_bpw is not None else {"bytes": int(target_size)},
        feasible=(lo, hi),
        method=method,
        optimal=bool(sol.optimal),
        skipped={tc.name: dict(tc.skipped) for tc in table.tensors if tc.skipped},
        budget=budget,
        used=fixed + int(sol.cost),
        underfill=_underfill(choices, sol.options, budget - fixed - int(sol.cost), budget),
    )


def _choices(table: SensitivityTable, by_size: bool) -> tuple[list[dict], int]:
    """Per tensor {type: (loss, cost)}; cost in aligned file bytes (by size) or data bytes (by bpw)."""
    key = "bytes" if by_size else "nbytes"
    choices = [{ty: (tc.loss[ty], getattr(tc, key)[ty]) for ty in tc.loss} for tc in table.tensors]
    return choices, (table.header_bytes + table.fixed_bytes if by_size else table.fixed_nbytes)


def feasible_range(table: SensitivityTable, by_size: bool = True) -> tuple[int, int]:
    """(smallest, largest) possible total: every tensor at its cheapest, every tensor at its dearest type.
    Bytes of the file (``by_size``) or of the tensor data (bits/weight numerator). A budget inside the range
    but above what the least-loss plan needs gets that plan (a smaller file: more bytes would not help)."""
    choices, fixed = _choices(table, by_size)
    lo = fixed + sum(min(c for _, c in ch.values()) for ch in choices)
    hi = fixed + sum(max(c for _, c in ch.values()) for ch in choices)
    return lo, hi


def _underfill(choices: list[dict], picked, slack: int, budget: int) -> str | None:
    """Why an optimal plan leaves more than 0.5 % of the budget unused: no tensor can lower its predicted
    loss at all, or every upgrade that would lower it costs more than what is left."""
    if slack <= 0.005 * budget:
        return None
    steps = [
        c - ch[p][1] for ch, p in zip(choices, picked, strict=True) for l, c in ch.values() if l < ch[p][0]
    ]
    if not steps:
        return "every tensor already has its lowest-predicted-loss type: more bytes would not lower the loss"
    return (
        f"{slack} bytes are left, and every type change that lowers the predicted loss needs at least "
        f"{min(steps)} more"
    )


def plan_patterns(plan: AllocationPlan, all_names: list[str]) -> list[tuple[str, str]]:
    """``(pattern, type)`` per planned tensor: the exact name, anchored and escaped only where the bare name
    (a regex searched in the name, as llama.cpp does) would also match another tensor of the file first."""
    out = []
    for t in plan.tensors:
        pat = t.name.lower()
        if any(re.search(pat, other) for other in all_names if other != t.name):
            pat = "^" + re.escape(t.name.lower()) + "$"
        out.append((pat, t.type))
    return out


def write_plan(plan: AllocationPlan, path: str | os.PathLike, all_names: list[str]) -> None:
    """The tensor-type file (``name=type`` lines), written atomically."""
    text = "".join(f"{p}={ty.lower()}\n" for p, ty in plan_patterns(plan, all_names))
    atomic_write_bytes(os.fspath(path), text.encode())


def plan_dict(plan: AllocationPlan) -> dict:
    """JSON-ready (``--json``): each tensor's type, bytes and predicted KL; skipped types with reasons."""
    return {
        "target": plan.target,
        "method": plan.method,
        "optimal": plan.optimal,
        "predicted_mean_kld": plan.predicted_kld,
        "file_bytes_upper_bound": plan.file_bytes,
        "bits_per_weight": round(plan.bits_per_weight, 4),
        "feasible_range": list(plan.feasible),
        "budget": plan.budget,
        "budget_used": plan.used,
        "underfill_reason": plan.underfill,
        "type_counts": _counts(plan),
        "tensors": [
            {"name": t.name, "type": t.type, "bytes": t.bytes, "predicted_kld": t.loss} for t in plan.tensors
        ],
        "skipped": plan.skipped,
    }


def recipe(plan: AllocationPlan, table: SensitivityTable) -> str:
    """The ``edgequant.recipe`` metadata value (``write_recipe``): plan, budget, settings, tool version."""
    from edgequant._version import __version__

    return json.dumps(
        {
            "tool": f"edgequant {__version__}",
            "target": plan.target,
            "method": plan.method,
            "sensitivity": {k: v for k, v in table.settings.items() if k not in ("model_mtime",)},
            "types": plan.types,
        },
        separators=(",", ":"),
    )


def _counts(plan: AllocationPlan) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in plan.tensors:
        out[t.type] = out.get(t.type, 0) + 1
    return dict(sorted(out.items()))


def allocate_model(
    src: str | os.PathLike,
    calib_text: str,
    *,
    target_bpw: float | None = None,
    target_size: int | None = None,
    plan_path: str | os.PathLike | None = None,
    solver: str = "exact",
    **collect,
) -> tuple[SensitivityTable, AllocationPlan]:
    """The whole job of ``edgequant allocate``: collect (or reuse ``state``) the sensitivity table, solve the
    budget, write the tensor-type file to ``plan_path`` if given. ``collect``: keyword arguments of
    :func:`~edgequant.workflows.sensitivity.collect_sensitivities` (imatrix, types, n_ctx, n_chunks, draws,
    seed, method, threads, state, on_progress)."""
    from edgequant.workflows.sensitivity import collect_sensitivities

    src = os.fspath(src)
    if (target_bpw is None) == (target_size is None):
        raise ConfigError("give exactly one of target_bpw and target_size", option="target_bpw")
    if plan_path is not None:
        from edgequant.core.atomic import check_writable

        check_writable(os.fspath(plan_path))
    table = collect_sensitivities(src, calib_text, **collect)
    plan = plan_budget(table, target_bpw=target_bpw, target_size=target_size, method=solver)
    if plan_path is not None:
        write_plan(plan, plan_path, tensor_names(src))
    return table, plan


def tensor_names(src: str | os.PathLike) -> list[str]:
    """Every tensor name of a GGUF file, in file order."""
    from edgequant.gguf.reader import GGUFFile

    with GGUFFile(os.fspath(src)) as reader:
        return [t.name for t in reader.tensors]
