"""The report's figures, drawn with matplotlib (Agg) and returned as inline SVG text (no external references:
fonts are named, not linked; the XML prolog and DOCTYPE are dropped; ids are salted so that the same results
give the same bytes).

* :func:`curve_figure`: the precision-compression curve, mean KLD (log scale) and PPL against bits per
  weight, one series per method, the Pareto front (no other candidate has fewer bits and a lower KLD) joined
  and ringed; the shifted-domain text dashed when present.
* :func:`heatmap_figure`: the sensitivity table as layers x tensor kinds, one panel per type, colour =
  log10 of the predicted mean KLD that tensor alone adds at that type.
* :func:`attribution_figure`: one candidate's per-layer error attribution (edgequant evaluate --attribution):
  bars of each layer's isolated KLD and of its increment in forward order, the critical path shaded.
* :func:`torch_figure`: the PyTorch sweep, mean KLD against bits per weight, and per-layer forward times.
* :func:`speed_figure`: prompt and generation tokens/s, and memory (file, RSS growth, llama.cpp's fit at
  the fit context) against bits per weight.
"""

from __future__ import annotations

import io
import math
import re

_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_BLOCK = re.compile(r"blk\.(\d+)\.([a-z_]+)\.weight$")
_MARKERS = {"ftype": "o", "ftype+imatrix": "s"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "edgequant",
            "font.size": 9,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (bpw, loss) that no other point beats on both (fewer bits and lower loss),
    in increasing bpw."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _series(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["bpw"]):
        out.setdefault(r["method"], []).append(r)
    return out


def curve_figure(rows: list[dict], base: dict | None) -> str:
    plt = _plt()
    fig, (ax_k, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    shifted = any("shifted" in r["quality"] for r in rows)
    for method, rs in _series(rows).items():
        bpw = [r["bpw"] for r in rs]
        m = _MARKERS.get(method, "^")
        line = ax_k.plot(bpw, [r["quality"]["eval"]["mean_kld"] for r in rs], marker=m, label=method)[0]
        ax_p.plot(
            bpw, [r["quality"]["eval"]["ppl"] for r in rs], marker=m, label=method, color=line.get_color()
        )
        if shifted:
            k = [r["quality"].get("shifted", {}).get("mean_kld", math.nan) for r in rs]
            ax_k.plot(
                bpw, k, marker=m, ls="--", mfc="none", color=line.get_color(), label=f"{method} (shifted)"
            )
    pts = [(r["bpw"], r["quality"]["eval"]["mean_kld"]) for r in rows]
    front = pareto(pts)
    ax_k.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="k", lw=1, ls=":", zorder=0)
    ax_k.scatter(
        [pts[i][0] for i in front],
        [pts[i][1] for i in front],
        s=140,
        facecolors="none",
        edgecolors="k",
        label="Pareto front",
    )
    ax_k.set_yscale("log")
    ax_k.set(
        xlabel="bits per weight", ylabel="mean KL divergence vs base", title="KLD vs size (lower is better)"
    )
    base_ppl = ((base or {}).get("quality") or {}).get("eval", {}).get("ppl")
    if base_ppl:
        ax_p.axhline(base_ppl, color="grey", ls="--", lw=1, label=f"base {base_ppl:.3f}")
    ax_p.set(xlabel="bits per weight", ylabel="perplexity (evaluation text)", title="PPL vs size")
    ax_k.legend(fontsize=7)
    ax_p.legend(fontsize=7)
    return _svg(fig)


def heatmap_grid(tensors: dict, ty: str) -> tuple[list[int], list[str], list[list[float]]]:
    """(layers, kinds, log10 loss[layer][kind]) of the block tensors at type ``ty`` (NaN where absent)."""
    cells: dict[tuple[int, str], float] = {}
    for name, t in tensors.items():
        m = _BLOCK.match(name)
        if m and ty in t["loss"]:
            cells[(int(m.group(1)), m.group(2))] = math.log10(max(t["loss"][ty], 1e-12))
    layers = sorted({k[0] for k in cells})
    kinds = [k for k in _KINDS if any(c[1] == k for c in cells)]
    kinds += sorted({c[1] for c in cells} - set(kinds))
    grid = [[cells.get((layer, k), math.nan) for k in kinds] for layer in layers]
    return layers, kinds, grid


def heatmap_figure(sens: dict) -> str:
    import numpy as np

    plt = _plt()
    types = [t for t in sens["types"] if heatmap_grid(sens["tensors"], t)[0]]
    grids = [heatmap_grid(sens["tensors"], t) for t in types]
    n_layers = max(len(g[0]) for g in grids)
    fig, axes = plt.subplots(
        1, len(types), figsize=(2.6 * len(types) + 1, 1.2 + 0.16 * n_layers), squeeze=False, sharey=True
    )
    vals = np.array([v for g in grids for row in g[2] for v in row], dtype=float)
    lo, hi = np.nanmin(vals), np.nanmax(vals)
    mesh = None
    for ax, ty, (layers, kinds, grid) in zip(axes[0], types, grids, strict=True):
        mesh = ax.pcolormesh(np.array(grid, dtype=float), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_xticks([i + 0.5 for i in range(len(kinds))], kinds, rotation=60, ha="right", fontsize=7)
        step = max(1, len(layers) // 16)
        ax.set_yticks([i + 0.5 for i in range(0, len(layers), step)], layers[::step], fontsize=7)
        ax.set_title(ty)
        ax.grid(False)
    axes[0][0].set_ylabel("layer")
    fig.colorbar(mesh, ax=axes[0].tolist(), label="log10 predicted mean KLD added")
    return _svg(fig)


def speed_figure(rows: list[dict], base: dict | None) -> str:
    plt = _plt()
    fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    pts = sorted(rows + ([base] if base and base.get("runtime") else []), key=lambda r: r["bpw"])
    bpw = [r["bpw"] for r in pts]
    rt = [r["runtime"] for r in pts]
    dots = {"ls": "none", "alpha": 0.8}  # one point per candidate: methods share sizes, a line would zigzag
    ax_s.plot(bpw, [x["prompt_tokens_per_s"] for x in rt], marker="o", label="prompt tokens/s", **dots)
    ax_s.plot(bpw, [x["gen_tokens_per_s"] for x in rt], marker="s", label="generation tokens/s", **dots)
    ax_s.set_yscale("log")
    ax_s.set(
        xlabel="bits per weight", ylabel="tokens/s", title=f"llama.cpp speed ({rt[0]['threads']} threads)"
    )
    mib = 2**20
    ax_m.plot(bpw, [r["file_bytes"] / mib for r in pts], marker="o", label="file", **dots)
    rss = [x["rss_growth_bytes"] / mib for x in rt]
    ax_m.plot(bpw, rss, marker="s", label="RSS growth (load + prompt)", **dots)
    ax_m.set(xlabel="bits per weight", ylabel="MiB", title="memory")
    for ax in (ax_s, ax_m):
        ax.legend(fontsize=7)
    return _svg(fig)


def _unit_label(name: str) -> str:
    return {"token_embd": "emb", "output": "out"}.get(name, name.removeprefix("blk."))


def attribution_figure(label: str, a: dict) -> str:
    """Per-unit bars of one candidate's attribution: the isolated KLD (unit alone quantized) and the
    increment (added when the units are quantized in forward order; the increments sum to the total); the
    units of the critical path shaded."""
    plt = _plt()
    units = a["units"]
    n = len(units)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * n + 2), 3.6))
    path = set(a["critical_path"])
    for i, u in enumerate(units):
        if u["name"] in path:
            ax.axvspan(i - 0.5, i + 0.5, color="#f4d7a8", lw=0, zorder=0)
    x = list(range(n))
    ax.bar([i - 0.2 for i in x], [u["isolated"] for u in units], width=0.4, label="isolated (alone)")
    ax.bar([i + 0.2 for i in x], [u["increment"] for u in units], width=0.4, label="increment (in order)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [_unit_label(u["name"]) for u in units], fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set(
        xlabel="layer (emb: token embedding, out: output head)",
        ylabel="mean KLD",
        title=f"{label}: per-layer error attribution (total {a['total']:.4g}; shaded: critical path, "
        f"{100 * a['path_share']:.0f}%)",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    return _svg(fig)


def torch_figure(section: dict) -> str:
    """The PyTorch sweep (edgequant evaluate --torch): mean KLD against bits per weight for the RTN scan
    (sym and asym joined by bit width) and the bitsandbytes-style layers; beside it, each decoder layer's
    forward time from the profile, float against each profiled candidate."""
    plt = _plt()
    fig, (ax_q, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    rows = section["candidates"]
    for kind, marker in (("sym", "o"), ("asym", "s")):
        pts = sorted((r["bpw"], r["quality"]["eval"]["mean_kld"], r["label"]) for r in rows
                     if r["label"].startswith("rtn-") and r["label"].endswith("-" + kind))  # fmt: skip
        if pts:
            ax_q.plot([p[0] for p in pts], [max(p[1], 1e-7) for p in pts], marker=marker, label=f"RTN {kind}")
    bnb = [r for r in rows if r["method"] == "torch:bnb"]
    for r in bnb:
        ax_q.plot(r["bpw"], max(r["quality"]["eval"]["mean_kld"], 1e-7), marker="D", ls="none", color="k")
        ax_q.annotate(r["label"], (r["bpw"], max(r["quality"]["eval"]["mean_kld"], 1e-7)), fontsize=7,
                      xytext=(4, 2), textcoords="offset points")  # fmt: skip
    ax_q.set_yscale("log")
    ax_q.set(xlabel="bits per weight (linears packed, other tensors 16-bit)", ylabel="mean KLD (PyTorch)",
             title="PyTorch sweep: quality vs size")  # fmt: skip
    ax_q.legend(fontsize=7)
    profiles = section.get("profiles") or {}
    for label, prof in profiles.items():
        layers = [p for p in prof if p["module"].count(".") == 2]
        ax_t.plot(range(len(layers)), [p["ms"] for p in layers], marker=".", label=label)
    ax_t.set(xlabel="decoder layer", ylabel="ms (torch.profiler, one chunk)", title="per-layer forward time")
    if profiles:
        ax_t.legend(fontsize=7)
    return _svg(fig)
