"""One option per item under a cost budget: the multiple-choice knapsack behind mixed-precision allocation.

``allocate(choices, budget)`` picks, for every item (a GGUF tensor, a PyTorch layer), one option (a type) from
``choices[i]: {option: (loss, cost)}`` so that the total cost is at most ``budget`` and the total predicted
loss ``sum_i loss[i][x_i]`` is minimal. Losses are any finite floats (negative allowed); costs are finite and
non-negative (integers, e.g. bytes, or floats). Totals are summed left to right in item order (float64 for
float costs, exact Python integers for integer costs); feasibility is ``cost <= budget`` on that total.

Preprocessing (every method): per item, options are sorted by cost and an option whose cost is at least that
of another option with a loss not higher is dropped (it never helps); what remains has strictly increasing
cost and strictly decreasing loss. Ties keep the first option given.

Methods:

- ``"exact"`` (provably optimal): a bounded dynamic program in the manner of Pisinger's "minimal algorithm"
  for the multiple-choice knapsack (Pisinger 1995, European J. Operational Research 83).
  (1) The LP relaxation, solved as Sinha & Zoltners (1979): the lower convex hull of each item's (cost, loss)
  points; all hull increments sorted by slope dloss/dcost and taken from the all-cheapest solution while they
  fit; the first that does not fit gives the multiplier ``lam = -slope``. ``LB = sum_i min_j (l_ij + lam c_ij)
  - lam * budget`` is the Lagrangian bound (= the LP optimum). Continuing down the sorted list and taking each
  increment that still fits gives a feasible incumbent of loss ``U``.
  (2) Reduced costs ``r_ij = l_ij + lam c_ij - min_j' (l_ij' + lam c_ij') >= 0``; every solution has
  ``loss = LB + sum_i r_i(x_i) + lam * (budget - cost)``, so an option with ``r_ij > U - LB`` is in no
  solution better than ``U`` and is dropped; items left with one option stay at their LP choice ``x*_i``
  (the option of least ``l + lam c``).
  (3) The remaining items enter one at a time, the most ambiguous first (an option's exchange rate closest
  to ``lam``). A state is a whole solution: the items entered so far at any option, the rest at ``x*``; after
  each item only the Pareto front of (cost, loss) is kept (a state with cost and loss both not lower than
  another's can be dropped: every completion of it applies to the other). Over the items still to enter, let
  ``G`` be the largest loss decrease per unit of cost added and ``H`` the smallest loss increase per unit of
  cost removed (``G <= lam <= H``). A state of slack ``s = budget - cost`` can end no lower than
  ``loss - G s`` (``s >= 0``) or ``loss + H |s|`` (``s < 0``); it is cut when that exceeds ``U``, or when its
  excess cost cannot be removed. Each feasible state is a solution and lowers ``U``. The least-loss feasible
  state seen is the optimum.
  Complexity: ``O(N K log(N K))`` for (1)-(2); (3) costs ``O(S K log S)`` per entered item with ``S`` states
  kept, bounded by the number of distinct costs within the bounds (never more than a DP over bytes), and in
  practice hundreds to a few thousand (400 items x 8 options of GGUF-like data: at most ~0.4 million states
  examined in all, ~0.2 s on one core; see ``benchmarks/bench_allocate.py``). When more than ``max_states``
  partial solutions in all would be examined (adversarial instances such as subset sum, where every option
  lies on one line), ConfigError: the search never returns an answer it has not proven optimal.
- ``"greedy"``: start from every item's cheapest option; repeatedly apply, among all upgrades of one item to
  a dearer option that still fits, the one with the largest ``(loss decrease) / (cost increase)``; stop when
  none fits. This is section 8.4.4's greedy (``argmax S_l / cost_l``) with upgrades to any dearer option
  rather than only the next level. Feasible, not optimal in general.
- ``"policy_gradient"``: section 8.4.4's reinforcement-learning search made concrete as REINFORCE (Williams
  1992) on independent categorical policies ``softmax(theta_i)`` per item: each iteration draws ``samples``
  assignments, rewards ``-(loss + penalty * max(0, cost - budget))`` with ``penalty = 2 * (steepest loss
  decrease per unit cost of any item)`` (so overspending never pays), standardises the rewards over the batch
  (mean baseline), and steps ``theta += lr * mean_s adv_s (onehot(x_s) - softmax(theta))``. Seeded; returns
  the best feasible sample seen, starting from the all-cheapest solution, so never infeasible. Not optimal.

The seed's exercise 7 (section 8.4, three layers at 4 or 8 bits, budget 150 MB) gives 0.095 as the answer
(layer 1 at 8 bits, 2 at 4, 3 at 8, 150 MB). That is wrong: layer 1 at 4 bits, layers 2 and 3 at 8 bits costs
140 MB for a loss of 0.075 (tested by enumeration in ``tests/unit/analysis/test_allocate.py``).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgequant.errors import ConfigError

METHODS = ("exact", "greedy", "policy_gradient")
MAX_STATES = 10_000_000


@dataclass(frozen=True)
class Allocation:
    """The chosen option per item (in item order), its total loss and cost, and how it was found.

    ``lower_bound``: the LP (Lagrangian) relaxation bound; the optimum lies in ``[lower_bound, loss]``.
    ``optimal``: True when ``loss`` is proven minimal (method ``"exact"``).
    """

    options: tuple[Hashable, ...]
    loss: float
    cost: int | float
    budget: int | float
    method: str
    lower_bound: float
    optimal: bool


@dataclass(frozen=True)
class _Problem:
    """The pruned instance: padded (N, K) arrays, cost ascending per row; padding has cost = loss = inf."""

    keys: list[list[Hashable]]
    raw_costs: list[list[int | float]]
    cost: np.ndarray
    loss: np.ndarray
    counts: np.ndarray
    integer: bool


def _real(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"allocate: {what} must be a finite number, got {value!r}")
    return float(value)


def _item_options(i: int, item) -> list[tuple[float, float, int, Hashable, int | float]]:
    if not isinstance(item, Mapping):
        raise ConfigError(f"allocate: choices[{i}] must be a mapping option -> (loss, cost), got {item!r}")
    if not item:
        raise ConfigError(f"allocate: choices[{i}] has no options; give at least one option -> (loss, cost)")
    rows = []
    for n, (key, pair) in enumerate(item.items()):
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise ConfigError(f"allocate: choices[{i}][{key!r}] must be a pair (loss, cost), got {pair!r}")
        loss = _real(pair[0], f"the loss of choices[{i}][{key!r}]")
        cost = _real(pair[1], f"the cost of choices[{i}][{key!r}]")
        if cost < 0:
            raise ConfigError(
                f"allocate: the cost of choices[{i}][{key!r}] is {pair[1]!r}; costs must be >= 0"
            )
        raw = int(pair[1]) if isinstance(pair[1], numbers.Integral) else float(pair[1])
        rows.append((cost, loss, n, key, raw))
    return rows


def _prepare(choices) -> _Problem:
    """Validate ``choices`` and drop dominated options (see the module docstring)."""
    if isinstance(choices, str | bytes | Mapping) or not isinstance(choices, Sequence):
        raise ConfigError(f"allocate: choices must be a list of mappings, got {type(choices).__name__}")
    if not choices:
        raise ConfigError("allocate: choices is empty; give one mapping option -> (loss, cost) per item")
    items, integer = [], True
    for i, item in enumerate(choices):
        kept, best = [], math.inf
        for cost, loss, _, key, raw in sorted(_item_options(i, item), key=lambda r: r[:3]):
            if loss < best:
                kept.append((cost, loss, key, raw))
                best = loss
        integer &= all(isinstance(r[3], int) for r in kept)
        items.append(kept)
    n, k = len(items), max(len(it) for it in items)
    cost, loss = np.full((n, k), np.inf), np.full((n, k), np.inf)
    for i, it in enumerate(items):
        cost[i, : len(it)] = [r[0] for r in it]
        loss[i, : len(it)] = [r[1] for r in it]
    return _Problem(
        keys=[[r[2] for r in it] for it in items],
        raw_costs=[[r[3] for r in it] for it in items],
        cost=cost,
        loss=loss,
        counts=np.array([len(it) for it in items]),
        integer=integer,
    )


def _total(values) -> float:
    """Left-to-right float64 sum (the order every method and the feasibility test use)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return float(np.cumsum(a)[-1]) if a.size else 0.0


def _check_budget(p: _Problem, budget) -> float:
    b = budget
    if isinstance(b, bool) or not isinstance(b, numbers.Real) or math.isnan(float(b)):
        raise ConfigError(f"allocate: budget must be a number, got {budget!r}")
    rows = np.arange(len(p.keys))
    cheapest = _total(p.cost[:, 0])
    if float(b) < cheapest:
        best = p.cost[rows, p.counts - 1]
        lo = sum(r[0] for r in p.raw_costs) if p.integer else cheapest
        hi = sum(r[-1] for r in p.raw_costs) if p.integer else _total(best)
        raise ConfigError(
            f"allocate: budget {budget} is below the smallest possible total cost {lo}; feasible budgets are "
            f"{lo} .. {hi} ({hi} or more gives every item its lowest-loss option)",
            option="budget",
        )
    return float(b)


def _hull_increments(
    cost: np.ndarray, loss: np.ndarray, item: int
) -> list[tuple[float, int, int, int, float]]:
    """(slope, item, from option, to option, dcost) of each step of the lower convex hull, cheapest first."""
    h = [0]
    for j in range(1, len(cost)):
        while len(h) >= 2:
            a, b = h[-2], h[-1]
            if (loss[b] - loss[a]) * (cost[j] - cost[a]) >= (loss[j] - loss[a]) * (cost[b] - cost[a]):
                h.pop()
            else:
                break
        h.append(j)
    return [
        ((loss[b] - loss[a]) / (cost[b] - cost[a]), item, a, b, cost[b] - cost[a])
        for a, b in itertools.pairwise(h)
    ]


def _lagrangian(p: _Problem, budget: float) -> tuple[float, float, np.ndarray]:
    """(lam, LB, hull-greedy pick): the LP relaxation's multiplier and bound (module docstring, step 1), and
    the feasible solution that takes the sorted hull increments in order, skipping those that do not fit."""
    incs = []
    for i, k in enumerate(p.counts):
        incs += _hull_increments(p.cost[i, :k], p.loss[i, :k], i)
    incs.sort(key=lambda t: t[:3])
    room, lam = budget - _total(p.cost[:, 0]), None
    pick = np.zeros(len(p.keys), dtype=np.int64)
    for slope, i, a, b, dc in incs:
        if pick[i] == a and dc <= room:
            pick[i], room = b, room - dc
        elif lam is None:
            lam = -slope
    lam = 0.0 if lam is None else lam
    with np.errstate(invalid="ignore"):
        shifted = np.where(np.isfinite(p.cost), p.loss + lam * p.cost, np.inf)
    bound = _total(shifted.min(axis=1)) - (lam * budget if lam > 0 else 0.0)
    rows = np.arange(len(p.keys))
    if _total(p.cost[rows, pick]) > budget:  # float costs: the running room can be an ulp off
        pick = np.zeros(len(p.keys), dtype=np.int64)
    return lam, bound, pick


def _greedy(p: _Problem, budget: float) -> np.ndarray:
    """The greedy of the module docstring; returns the option index per item."""
    n = len(p.keys)
    rows = np.arange(n)
    pick = np.zeros(n, dtype=np.int64)
    while True:
        cur_c, cur_l = p.cost[rows, pick], p.loss[rows, pick]
        room = budget - _total(cur_c)
        with np.errstate(invalid="ignore"):
            dc = p.cost - cur_c[:, None]
            ok = np.isfinite(p.cost) & (dc > 0) & (dc <= room)
            if not ok.any():
                return pick
            eff = np.where(ok, (cur_l[:, None] - p.loss) / np.where(ok, dc, 1.0), -np.inf)
        i, j = np.unravel_index(int(np.argmax(eff)), eff.shape)
        trial = pick.copy()
        trial[i] = j
        if _total(p.cost[rows, trial]) > budget:  # float costs: the running room can be an ulp off
            return pick
        pick = trial


def _moves(p: _Problem, star: np.ndarray, allowed: np.ndarray):
    """Per item, relative to its option ``star``, over its allowed options: the best loss decrease per unit of
    cost added ``g``, the least loss increase per unit of cost removed ``h``, the largest cost removable."""
    rows = np.arange(len(p.keys))
    with np.errstate(invalid="ignore", divide="ignore"):
        dc = p.cost - p.cost[rows, star][:, None]
        dl = p.loss - p.loss[rows, star][:, None]
        up, down = allowed & (dc > 0), allowed & (dc < 0)
        g = np.where(up, -dl / np.where(up, dc, 1.0), 0.0).max(axis=1, initial=0.0)
        h = np.where(down, dl / np.where(down, -dc, 1.0), np.inf).min(axis=1, initial=np.inf)
        dec = np.where(down, -dc, 0.0).max(axis=1, initial=0.0)
    return dc, dl, g, h, dec


def _suffixes(order: np.ndarray, g: np.ndarray, h: np.ndarray, dec: np.ndarray):
    """G[t] = max g, H[t] = min h (at least G[t]), D[t] = sum of removable cost, over items order[t:]."""
    m = len(order)
    big_g, big_h, big_d = np.zeros(m + 1), np.full(m + 1, np.inf), np.zeros(m + 1)
    for t in range(m - 1, -1, -1):
        i = order[t]
        big_g[t] = max(big_g[t + 1], g[i])
        big_h[t] = max(min(big_h[t + 1], h[i]), big_g[t])
        big_d[t] = big_d[t + 1] + dec[i]
    return big_g, big_h, big_d


def _exact(p: _Problem, budget: float, lam: float, bound: float, incumbent: np.ndarray, max_states: int):
    """Steps 3-4 of the module docstring; returns the option index per item of an optimal solution."""
    rows = np.arange(len(p.keys))
    with np.errstate(invalid="ignore"):
        shifted = np.where(np.isfinite(p.cost), p.loss + lam * p.cost, np.inf)
    star = np.argmin(shifted, axis=1)  # the LP's integral choice (the cheaper one on a tie)
    reduced = shifted - shifted[rows, star][:, None]
    upper, best = _total(p.loss[rows, incumbent]), (None, incumbent)
    scale = 1.0 + float(np.abs(np.where(np.isfinite(p.loss), p.loss, 0.0)).sum())
    tol = 1e-9 * scale  # looser cuts keep more states: the tolerance errs on the safe side
    ctol = 0.0 if p.integer else 1e-9 * max(1.0, abs(budget))
    dc, dl, g, h, dec = _moves(p, star, reduced <= upper - bound + tol)
    free = np.flatnonzero((reduced <= upper - bound + tol).sum(axis=1) > 1)
    order = free[np.argsort(np.minimum(lam - g[free], h[free] - lam), kind="stable")]
    big_g, big_h, big_d = _suffixes(order, g, h, dec)
    s_cost, s_loss = np.array([_total(p.cost[rows, star])]), np.array([_total(p.loss[rows, star])])
    back, examined = [], 0
    for t, i in enumerate(order):
        opts = np.flatnonzero(reduced[i] <= upper - bound + tol)
        examined += len(s_cost) * len(opts)
        if examined > max_states:
            raise ConfigError(
                f"allocate: the exact search examined more than max_states={max_states} partial solutions; "
                "use method='greedy', raise max_states, or round the costs to a coarser unit",
                option="max_states",
            )
        c = (s_cost[:, None] + dc[i, opts][None, :]).ravel()
        l = (s_loss[:, None] + dl[i, opts][None, :]).ravel()
        parent, opt = np.repeat(np.arange(len(s_cost)), len(opts)), np.tile(opts, len(s_cost))
        slack = budget - c
        with np.errstate(invalid="ignore"):
            cut = np.where(slack >= 0, l - big_g[t + 1] * slack, l - big_h[t + 1] * slack)
        keep = np.flatnonzero((cut <= upper + tol) & (c - big_d[t + 1] <= budget + ctol))
        keep = keep[np.lexsort((l[keep], c[keep]))]
        front = np.ones(len(keep), dtype=bool)
        front[1:] = l[keep][1:] < np.minimum.accumulate(l[keep])[:-1]
        keep = keep[front]
        s_cost, s_loss = c[keep], l[keep]
        back.append((parent[keep], opt[keep]))
        feasible = np.flatnonzero(s_cost <= budget - ctol)
        if len(feasible) and s_loss[feasible].min() < upper:
            state = int(feasible[np.argmin(s_loss[feasible])])
            upper, best = float(s_loss[state]), (t, state)
    return _trace(best, back, order, star, p, budget)


def _trace(best, back, order, star, p: _Problem, budget: float) -> np.ndarray:
    """The option per item of the state ``best = (step, index)`` (items not yet decided keep ``star``)."""
    step, state = best
    if step is None:
        return state
    pick = star.copy()
    for t in range(step, -1, -1):
        parent, opt = back[t]
        pick[order[t]] = opt[state]
        state = int(parent[state])
    if _total(p.cost[np.arange(len(pick)), pick]) > budget:  # cannot happen: ctol keeps a margin
        raise AssertionError("allocate: the exact search returned an infeasible solution")
    return pick


def _policy_gradient(p: _Problem, budget: float, seed: int, iterations: int, samples: int, lr: float):
    """REINFORCE over per-item categorical policies (module docstring); the best feasible sample's indices."""
    rng = np.random.default_rng(seed)
    n, k = p.cost.shape
    rows = np.arange(n)
    valid = np.isfinite(p.cost)
    theta = np.where(valid, 0.0, -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        steep = np.where(valid[:, 1:], (p.loss[:, :1] - p.loss[:, 1:]) / (p.cost[:, 1:] - p.cost[:, :1]), 0)
    penalty = 2.0 * float(steep.max()) if steep.size else 0.0
    best = np.zeros(n, dtype=np.int64)
    best_loss = _total(p.loss[rows, best])
    last = np.arange(k)[None, :] >= (p.counts - 1)[:, None]
    for _ in range(iterations):
        z = np.exp(theta - theta.max(axis=1, keepdims=True))
        prob = z / z.sum(axis=1, keepdims=True)
        cum = np.where(last, np.inf, np.cumsum(prob, axis=1))  # inverse CDF; never lands on padding
        picks = (rng.random((samples, n, 1)) >= cum[None]).sum(axis=2)
        cost = np.cumsum(p.cost[rows, picks], axis=1)[:, -1]  # left to right, as _total
        loss = np.cumsum(p.loss[rows, picks], axis=1)[:, -1]
        reward = -(loss + penalty * np.maximum(0.0, cost - budget))
        adv = reward - reward.mean()
        if adv.std() > 0:
            adv /= adv.std()
        ok = np.flatnonzero(cost <= budget)
        if len(ok) and loss[ok].min() < best_loss:
            s = int(ok[np.argmin(loss[ok])])
            best, best_loss = picks[s].copy(), float(loss[s])
        grad = np.zeros((n, k))
        np.add.at(grad, (np.broadcast_to(rows, picks.shape), picks), adv[:, None])
        theta = theta + lr * (grad - adv.sum() * prob) / samples
    return best


def allocate(
    choices: Sequence[Mapping[Hashable, tuple[float, int | float]]],
    budget: int | float,
    *,
    method: str = "exact",
    seed: int = 0,
    iterations: int = 300,
    samples: int = 64,
    lr: float = 2.0,
    max_states: int = MAX_STATES,
) -> Allocation:
    """Choose one option per item minimizing the total loss with total cost <= ``budget``.

    ``choices[i]``: ``{option: (loss, cost)}``. ``method``: ``"exact"``, ``"greedy"`` or
    ``"policy_gradient"`` (see the module docstring; ``seed``, ``iterations``, ``samples`` and ``lr`` are the
    policy-gradient search's, ``max_states`` the exact search's limit). A budget below the cheapest total
    raises ConfigError naming the feasible range; a budget above the dearest useful total gives every item its
    lowest-loss option.
    """
    if method not in METHODS:
        raise ConfigError(f"allocate: method={method!r}; use one of {METHODS}", option="method")
    p = _prepare(choices)
    b = _check_budget(p, budget)
    rows = np.arange(len(p.keys))
    lam, bound, hull_pick = _lagrangian(p, b)
    if method == "policy_gradient":
        pick = _policy_gradient(p, b, seed, iterations, samples, lr)
    elif method == "exact" and _total(p.cost[rows, p.counts - 1]) <= b:
        pick = p.counts - 1
    elif method == "exact":
        pick = _exact(p, b, lam, bound, hull_pick, max_states)
    else:
        pick = _greedy(p, b)
    raw = [p.raw_costs[i][j] for i, j in enumerate(pick)]
    return Allocation(
        options=tuple(p.keys[i][j] for i, j in enumerate(pick)),
        loss=_total(p.loss[rows, pick]),
        cost=sum(raw) if p.integer else _total(raw),
        budget=budget,
        method=method,
        lower_bound=float(min(bound, _total(p.loss[rows, pick]))),
        optimal=method == "exact",
    )
