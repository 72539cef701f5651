"""``edgequant report``: one self-contained HTML file from the results of ``edgequant evaluate``.

The page is rendered by jinja2 from ``templates/report.html.j2`` (autoescaped: labels and paths from the
results file are text, never markup) with the figures of :mod:`edgequant.workflows.report_figures` inlined
as SVG. No script, no stylesheet, image or font from elsewhere: the file opens offline.

Device advice (:func:`device_table`) applies ``edgequant recommend``'s rule to the measured candidates:
fit = tensor bytes + KV cache at the fit context (the model's shape, F16 cache) + llama.cpp's compute and
output buffers measured by ``evaluate``; candidates ranked by mean KLD (lowest first); for each memory size
the first that fits, beside the book's rule of thumb (for 7B-class models).

Error attribution (``evaluate --attribution``, results key ``"attribution"`` version 1): one figure per
attributed candidate and one sentence of advice (:func:`attribution_advice`) naming its critical path and
the tensor kinds that matter most in its top layers.
"""

from __future__ import annotations

import datetime
import importlib.resources
import os

from edgequant.core.atomic import atomic_write_bytes, check_writable
from edgequant.workflows.evaluate import read_results
from edgequant.workflows.recommend import GB, Candidate, Fit, ModelShape, rank, rule_of_thumb

MEMORIES_GB = (1, 2, 4, 8, 16)
MAX_BYTES = 3 * 2**20
# Mean KLD thresholds of the written advice (rules of thumb, stated in the page).
KLD_GOOD, KLD_POOR = 0.01, 0.1


def _shape(doc: dict) -> ModelShape:
    s = dict(doc["shape"])
    s["n_head_kv"] = tuple(s["n_head_kv"])
    return ModelShape(**s)


def _fits(doc: dict) -> list[Fit]:
    """recommend's Fit of every candidate at the fit context, in recommend's rank order (mean KLD)."""
    shape = _shape(doc)
    by_label = {r["label"]: r for r in doc["candidates"]}
    cands = [
        Candidate(
            r["label"],
            r["label"],
            r["ftype"],
            r["tensor_bytes"],
            r["n_params"],
            r["quality"]["eval"]["mean_kld"],
            shape,
        )
        for r in doc["candidates"]
    ]
    ordered, _ = rank(cands)
    out = []
    for c in ordered:
        rt = by_label[c.label]["runtime"]
        out.append(
            Fit(c, c.weight_bytes, shape.kv_bytes(rt["fit_ctx"]), rt["compute_bytes"], rt["output_bytes"])
        )
    return out


def device_table(doc: dict, memories_gb: tuple[int, ...] = MEMORIES_GB) -> list[dict]:
    """For each memory size (GB = 10^9 bytes): the lowest-KLD candidate whose fit is within it, or None."""
    fits = _fits(doc)
    rows = []
    for gb in memories_gb:
        memory = gb * GB
        choice = next((f for f in fits if f.total <= memory), None)
        rows.append(
            {
                "memory_gb": gb,
                "choice": choice.candidate.label if choice else None,
                "needs_mib": choice.total / 2**20 if choice else None,
                "kld": choice.candidate.kld if choice else None,
                "smallest_needs_mib": min(f.total for f in fits) / 2**20 if fits else None,
                "rule_of_thumb": " or ".join(rule_of_thumb(memory)),
            }
        )
    return rows


def keep_higher(sens: dict | None, n: int = 5) -> list[dict]:
    """The ``n`` tensors with the largest predicted KLD at the cheapest type measured for each."""
    if not sens:
        return []
    order = {t: i for i, t in enumerate(sens["types"])}
    rows = []
    for name, t in sens["tensors"].items():
        if not t["loss"]:
            continue
        ty = min(t["loss"], key=lambda x: (_bits(x), order.get(x, 0)))
        rows.append({"tensor": name, "type": ty, "kld": t["loss"][ty]})
    return sorted(rows, key=lambda r: -r["kld"])[:n]


def _bits(ty: str) -> float:
    from edgequant.gguf.codecs import get_codec

    c = get_codec(ty)
    return 8.0 * c.row_bytes(c.block_size) / c.block_size


def advice(doc: dict, devices: list[dict]) -> list[str]:
    """The written advice: sentences from the measured numbers."""
    rows = sorted(doc["candidates"], key=lambda r: r["bpw"])
    out = []
    for d in devices:
        if d["choice"]:
            out.append(
                f"{d['memory_gb']} GB: {d['choice']} (needs {d['needs_mib']:.0f} MiB at the fit context, "
                f"mean KLD {d['kld']:.4g}); the book's rule of thumb says {d['rule_of_thumb']}."
            )
        else:
            out.append(
                f"{d['memory_gb']} GB: no candidate fits; the smallest needs "
                f"{d['smallest_needs_mib']:.0f} MiB."
            )
    good = [r for r in rows if r["quality"]["eval"]["mean_kld"] <= KLD_GOOD]
    poor = [r for r in rows if r["quality"]["eval"]["mean_kld"] > KLD_POOR]
    if good:
        out.append(
            f"From {good[0]['bpw']:.2f} bits per weight ({good[0]['label']}) the mean KLD is at most "
            f"{KLD_GOOD}: post-training quantization is enough there."
        )
    if poor:
        names = ", ".join(r["label"] for r in poor)
        out.append(
            f"{names}: mean KLD above {KLD_POOR}, a visible loss of quality. If a device needs these sizes, "
            "quantization-aware training (edgequant qat) is worth trying; first try an imatrix and a "
            "per-tensor allocation (edgequant allocate)."
        )
    imx = {r["ftype"]: r for r in rows if r["imatrix"]}
    gains = [
        (r["label"], r["quality"]["eval"]["mean_kld"] / imx[r["ftype"]]["quality"]["eval"]["mean_kld"])
        for r in rows
        if not r["imatrix"] and r["ftype"] in imx and imx[r["ftype"]]["quality"]["eval"]["mean_kld"] > 0
    ]
    if gains:
        best = max(gains, key=lambda g: g[1])
        out.append(f"The imatrix helps most at {best[0]}: {best[1]:.2f}x lower mean KLD with it.")
    return out


def attributions(doc: dict) -> dict[str, dict]:
    """{candidate label: attribution} of a results document (empty without a version-1 entry)."""
    entry = doc.get("attribution")
    if not isinstance(entry, dict) or entry.get("version") != 1:
        return {}
    return dict(entry.get("candidates") or {})


def attribution_advice(label: str, a: dict) -> str:
    """One sentence: the critical path of ``label``, its share, and the top tensor kind of its top layers."""
    if not a["critical_path"]:
        return f"{label}: no measurable KLD to attribute."
    by = {u["name"]: u for u in a["units"]}
    top = sorted(a["critical_path"], key=lambda n: -by[n]["increment"])
    kinds = [
        f"{n} ({by[n]['top_kind']}, {by[n]['kinds'][by[n]['top_kind']]:.3g} alone)"
        for n in top
        if by[n].get("top_kind")
    ]
    text = (
        f"{label}: {len(top)} of {len(by)} layers make up {100 * a['path_share']:.0f}% of the mean KLD "
        f"({a['total']:.4g} in PyTorch); the largest increments: {', '.join(top[:5])}. "
    )
    if kinds:
        text += f"Keep these at a higher type first; the tensor that matters most: {', '.join(kinds)}. "
    inter = a["interaction"]
    how = "compound (the whole is worse than the sum)" if inter > 0 else "partly cancel"
    return text + (
        f"The layers' isolated KLDs sum to {a['isolated_sum']:.4g}: the errors {how} by {abs(inter):.3g}."
    )


def torch_section(doc: dict) -> dict | None:
    """The PyTorch sweep of a results document (``evaluate --torch``), or None without a version-1 one."""
    from edgequant.workflows.evaluate_torch import TORCH_KEY, TORCH_VERSION

    section = doc.get(TORCH_KEY)
    if not isinstance(section, dict) or section.get("version") != TORCH_VERSION:
        return None
    return section if section.get("candidates") else None


def torch_advice(section: dict) -> str:
    """One sentence: the smallest PyTorch candidate within :data:`KLD_GOOD`, and sym against asym."""
    rows = sorted(section["candidates"], key=lambda r: r["bpw"])
    good = [r for r in rows if r["quality"]["eval"]["mean_kld"] <= KLD_GOOD]
    text = (
        f"In PyTorch, the smallest layer format within mean KLD {KLD_GOOD} is {good[0]['label']} "
        f"({good[0]['bpw']:.2f} bits per weight)."
        if good
        else f"In PyTorch, no layer format stays within mean KLD {KLD_GOOD}."
    )
    by = {r["label"]: r["quality"]["eval"]["mean_kld"] for r in rows}
    wins = [b for b in (2, 4, 6, 8) if by.get(f"rtn-w{b}-asym", 1) < by.get(f"rtn-w{b}-sym", 0)]
    if wins:
        text += f" An offset (asym) beats a symmetric grid at {', '.join(map(str, wins))} bits."
    return text


def _template():
    import jinja2

    text = (
        importlib.resources.files("edgequant.workflows")
        .joinpath("templates/report.html.j2")
        .read_text("utf-8")
    )
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    return env.from_string(text)


def render_report(doc: dict) -> str:
    """The HTML page for a results document (already checked by ``read_results``)."""
    from markupsafe import Markup

    from edgequant import __version__
    from edgequant.workflows import report_figures as figs

    rows = doc["candidates"]
    base = doc.get("base")
    devices = device_table(doc) if rows else []
    sens = doc.get("sensitivity")
    figures = {}
    if rows:
        figures["curve"] = Markup(figs.curve_figure(rows, base))
        figures["speed"] = Markup(figs.speed_figure(rows, base))
    if sens:
        figures["heatmap"] = Markup(figs.heatmap_figure(sens))
    attrib = [
        {
            "label": lbl,
            "a": a,
            "figure": Markup(figs.attribution_figure(lbl, a)),
            "advice": attribution_advice(lbl, a),
        }
        for lbl, a in attributions(doc).items()
    ]
    torch_rows = torch_section(doc)
    if torch_rows:
        figures["torch"] = Markup(figs.torch_figure(torch_rows))
    front = {
        rows[i]["label"] for i in figs.pareto([(r["bpw"], r["quality"]["eval"]["mean_kld"]) for r in rows])
    }
    settings = rows[0]["settings"] if rows else (base or {}).get("settings", {})
    texts = settings.get("texts", {})
    return _template().render(
        doc=doc,
        rows=sorted(rows, key=lambda r: -r["bpw"]),
        base=base,
        front=front,
        figures=figures,
        devices=devices,
        advice=(advice(doc, devices) if rows else [])
        + [x["advice"] for x in attrib]
        + ([torch_advice(torch_rows)] if torch_rows else []),
        torch_rows=sorted(torch_rows["candidates"], key=lambda r: -r["bpw"]) if torch_rows else [],
        keep_higher=keep_higher(sens),
        attributions=attrib,
        settings=settings,
        eval_text=texts.get("eval", {}).get("path", "?"),
        shifted_text=texts.get("shifted", {}).get("path"),
        load_range=_load_range([*rows, base or {}]),
        cpus=next((r["runtime"]["cpus"] for r in rows if "cpus" in r["runtime"]), "?"),
        version=__version__,
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _load_range(rows: list[dict]) -> str | None:
    loads = [r["runtime"]["load_average"] for r in rows if "load_average" in r.get("runtime", {})]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else None


def write_report(results: str, out: str) -> dict:
    """Read ``results``, write the page to ``out`` atomically; a summary dict (output, bytes, figures)."""
    results, out = os.fspath(results), os.fspath(out)
    doc = read_results(results)
    check_writable(out)
    html = render_report(doc).encode("utf-8")
    atomic_write_bytes(out, html)
    return {
        "output": out,
        "bytes": len(html),
        "candidates": len(doc["candidates"]),
        "figures": html.count(b"<svg"),
        "over_limit": len(html) > MAX_BYTES,
    }
