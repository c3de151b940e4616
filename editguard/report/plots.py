"""PNG plots in the papers' shapes: the perplexity of every single-edited model (log scale, the
collapse line at 1000), perplexity after each step of sequential editing (one line per editor
and sequence), and the screen's risk against post-edit perplexity.

Every plot marks each case by its verdict (editguard.report.verdicts): passed (blue dot),
failed a gate without collapsing (orange triangle), collapsed (red cross; a NaN/Inf perplexity
is drawn at the top of the axis), and draws the gate lines that apply to its axes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from editguard.cache import safe_name
from editguard.report.verdicts import COLLAPSED, FAILED_GATE, PASSED, verdict

# Colour and marker per verdict, the same in every plot.
VERDICT_STYLE = {
    PASSED: dict(color="tab:blue", marker="o", label="passed"),
    FAILED_GATE: dict(color="tab:orange", marker="^", label="failed a gate (not collapsed)"),
    COLLAPSED: dict(color="tab:red", marker="x", label="collapsed"),
}
# Line styles and markers that keep coinciding sequence lines apart (cycled per series).
SERIES_STYLES = [("-", "o"), ("--", "s"), (":", "D"), ("-.", "v"), ((0, (5, 1, 1, 1)), "P"), ((0, (1, 1)), "*")]
# Series colours outside the verdict palette (blue, orange, red), so a line never reads as a verdict.
SERIES_COLORS = ["tab:green", "tab:purple", "tab:brown", "black", "tab:olive", "tab:cyan", "tab:pink", "tab:gray",
                 "darkgoldenrod", "darkslateblue", "teal", "maroon"]
MAX_TICK_LABELS = 40


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'editguard[plots]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def order_by_id(cases: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Cases by id: numerically where every id is a number, else as text; and the order's name."""
    def number(case):
        try:
            return float(case["case_id"])
        except (TypeError, ValueError):
            return None

    if cases and all(number(c) is not None for c in cases):
        return sorted(cases, key=number), "numeric order"
    return sorted(cases, key=lambda c: str(c["case_id"])), "text order"


def _label_ids(ax, ids: list[str], order: str) -> None:
    """Tick labels that are the case ids (every k-th where there are many), and the order stated."""
    step = max(1, math.ceil(len(ids) / MAX_TICK_LABELS))
    ticks = list(range(0, len(ids), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([ids[i] for i in ticks], rotation=90, fontsize=7)
    shown = "" if step == 1 else f", every {step}th labelled"
    ax.set_xlabel(f"case id ({order}{shown})")


def _y_for_nan(values: list[float]) -> float:
    finite = [v for v in values if _finite(v) and v > 0]
    return (max(finite) if finite else 1.0) * 3


def plot_ppl_scatter(run: dict[str, Any], cases: list[dict[str, Any]], path: str | Path) -> Path:
    """Perplexity of each single-edited model, by case id, log scale, marked by verdict, with the
    collapse line and the ratio gate (ppl_max_ratio × unedited) where it lies below it."""
    plt = _pyplot()
    t = run["thresholds"]
    line = t["ppl_max"]
    cases, order = order_by_id(cases)
    fig, ax = plt.subplots(figsize=(max(8, min(16, 0.18 * len(cases) + 4)), 4.5))
    top = _y_for_nan([c["ppl"] for c in cases] + [line])
    for v, style in VERDICT_STYLE.items():
        pts = [(i, c["ppl"]) for i, c in enumerate(cases) if verdict(c, line) == v]
        if pts:
            n_nan = sum(not _finite(p) for _, p in pts)
            label = style["label"] + (f" ({n_nan} NaN/Inf, drawn at the top)" if n_nan else "")
            if v == FAILED_GATE:  # this axis shows only perplexity: say which gates these failed
                gates = sorted({g for c in cases if verdict(c, line) == v for g in c.get("failed_gates", ())})
                label += f" [{', '.join(gates)}]" if gates else ""
            ax.scatter([i for i, _ in pts], [p if _finite(p) else top for _, p in pts], s=22,
                       c=style["color"], marker=style["marker"], label=f"{label}: {len(pts)}", zorder=3)
    ax.axhline(line, color="tab:red", linestyle="--", linewidth=1, label=f"collapse line ({line:g})")
    ratio_line = t.get("ppl_max_ratio", math.inf) * run["baseline_ppl"]
    if ratio_line < line:
        ax.axhline(ratio_line, color="tab:orange", linestyle="-.", linewidth=1,
                   label=f"perplexity gate ({t['ppl_max_ratio']:g} × unedited = {ratio_line:.1f})")
    ax.axhline(run["baseline_ppl"], color="gray", linestyle=":", linewidth=1,
               label=f"unedited ({run['baseline_ppl']:.1f})")
    ax.set_yscale("log")
    _label_ids(ax, [str(c["case_id"]) for c in cases], order)
    ax.set_ylabel(f"perplexity ({run['ppl_corpus']})")
    ax.set_title(f"{run['editor']} on {run['model']}: one edit per case ({run.get('suite', '')})")
    ax.legend(loc="upper left", fontsize=7, bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_sequences(series: list[tuple[str, list[dict[str, Any]]]], path: str | Path,
                   ppl_max: float = 1000.0, baseline_ppl: float | None = None) -> Path:
    """Perplexity (log) after each edit, one line per (label, steps) series, each with its own dash
    and marker so that coinciding lines stay visible; steps that failed a gate or collapsed marked.
    Only steps whose perplexity was measured are drawn (--ppl-every). Where steps carry downstream
    scores (--downstream), a second panel shows each task's accuracy on the same steps."""
    plt = _pyplot()
    series = [(label, sorted((c for c in steps if c.get("ppl_probed", True)), key=lambda c: c["step"]))
              for label, steps in series]
    tasks = sorted({task for _, steps in series for c in steps for task in (c.get("downstream") or {})})
    all_ppl = [c["ppl"] for _, steps in series for c in steps]
    top = _y_for_nan(all_ppl + [ppl_max])
    # A collapse (10^10) flattens every series that stays near its baseline (10^2) on one log axis:
    # those get a linear panel of their own, below the collapse line.
    below = [all(_finite(c["ppl"]) and c["ppl"] < ppl_max for c in steps) for _, steps in series]
    zoom = any(below) and not all(below) and top > 10 * ppl_max
    heights = (3,) + ((2,) if zoom else ()) + ((2,) if tasks else ())
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, 2.5 + 2.5 * len(heights)), sharex=True,
                             height_ratios=heights, squeeze=False)
    axes = list(axes[:, 0])
    ax = axes.pop(0)
    ax_zoom = axes.pop(0) if zoom else None
    ax_down = axes.pop(0) if tasks else None
    flagged: dict[str, list[tuple[int, float]]] = {FAILED_GATE: [], COLLAPSED: []}
    for k, (label, steps) in enumerate(series):
        xs = [0] + [c["step"] for c in steps]
        start = steps[0]["ppl_baseline"] if steps else baseline_ppl
        ys = [start] + [c["ppl"] if _finite(c["ppl"]) else top for c in steps]
        dash, marker = SERIES_STYLES[k % len(SERIES_STYLES)]
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        for axis in [ax] + ([ax_zoom] if ax_zoom is not None and below[k] else []):
            axis.plot(xs, ys, linestyle=dash, marker=marker, markersize=5 + 1.5 * (k % 3), fillstyle="none",
                      color=color, linewidth=1.4, alpha=0.9, label=label, zorder=10 + k)
        for c, y in zip(steps, ys[1:]):
            v = verdict(c, ppl_max)
            if v in flagged:
                flagged[v].append((c["step"], y))
        for t, task in enumerate(tasks):
            scored = [c for c in steps if task in (c.get("downstream") or {})]
            pts = [(0, c["downstream"][task]["unedited"]) for c in scored[:1]]
            pts += [(c["step"], c["downstream"][task]["accuracy"]) for c in scored]
            if pts:
                ax_down.plot([x for x, _ in pts], [y for _, y in pts], linestyle=dash, color=color,
                             marker=SERIES_STYLES[t % len(SERIES_STYLES)][1], fillstyle="none", linewidth=1.2,
                             label=f"{label} · {task}")
    for v, pts in flagged.items():
        if pts:
            style = VERDICT_STYLE[v]
            # Large and beneath the series' hollow markers, so both stay visible where lines coincide.
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=150, c=style["color"], marker=style["marker"],
                       alpha=0.6, label=f"step {style['label']}", zorder=5)
    ax.axhline(ppl_max, color="tab:red", linestyle="--", linewidth=1, label=f"collapse line ({ppl_max:g})")
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("perplexity")
    ax.set_title("perplexity during sequential editing" + (" and downstream accuracy" if tasks else ""))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom = ax
    if ax_zoom is not None:
        ax_zoom.set_ylabel("perplexity (linear)")
        ax_zoom.set_title(f"the series that stay below the collapse line ({ppl_max:g})", fontsize=9)
        bottom = ax_zoom
    if ax_down is not None:
        ax_down.set_ylabel("downstream accuracy")
        ax_down.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        bottom = ax_down
    bottom.set_xlabel("number of edits (0: unedited)")
    return _save(fig, path)


def plot_risk_vs_ppl(records: list[dict[str, Any]], path: str | Path, ppl_max: float = 1000.0) -> Path:
    """The screen's denominator ratio (before any edit) against the edited model's perplexity;
    colour by verdict, marker by group (top-risk ●, control ■)."""
    plt = _pyplot()
    scored = [r for r in records if r.get("screen")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = _y_for_nan([r["ppl"] for r in scored] + [ppl_max])
    for group, marker in (("top-risk", "o"), ("control", "s")):
        for v, style in VERDICT_STYLE.items():
            rows = [r for r in scored if r.get("group") == group and verdict(r, ppl_max) == v]
            if rows:
                ax.scatter([max(abs(r["screen"]["denominator_ratio"]), 1e-5) for r in rows],
                           [r["ppl"] if _finite(r["ppl"]) else top for r in rows],
                           s=16, c=style["color"], marker=marker, label=f"{group}, {style['label']}: {len(rows)}")
    ax.axhline(ppl_max, color="tab:red", linestyle="--", linewidth=1, label=f"collapse line ({ppl_max:g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|denominator ratio| from the screen (no edit)")
    ax.set_ylabel("perplexity after the edit")
    ax.set_title("collapse risk vs outcome")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_anatomy(run: dict[str, Any], cases: list[dict[str, Any]], path: str | Path) -> Path:
    """ROME's anatomy per edit: key cosine cos(k̄, kᵘ) against |denominator ratio|, each edit
    marked by its verdict; the denominator gate drawn where it applies."""
    plt = _pyplot()
    line = run["thresholds"]["ppl_max"]
    rows = [c for c in cases if _finite(c.get("key_cosine")) and _finite(c.get("denominator_ratio"))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v, style in VERDICT_STYLE.items():
        pts = [c for c in rows if verdict(c, line) == v]
        if pts:
            ax.scatter([c["key_cosine"] for c in pts], [max(abs(c["denominator_ratio"]), 1e-5) for c in pts],
                       s=22, c=style["color"], marker=style["marker"], label=f"{style['label']}: {len(pts)}")
    gate = run["thresholds"].get("denominator_ratio_min")
    if gate:
        ax.axhline(gate, color="tab:orange", linestyle="-.", linewidth=1, label=f"denominator gate ({gate:g})")
    ax.set_yscale("log")
    ax.set_xlim(min([-0.1] + [c["key_cosine"] - 0.05 for c in rows]), 1.02)
    ax.set_xlabel("cos(k̄, kᵘ)")
    ax.set_ylabel("|denominator ratio| (key used vs k̄)")
    ax.set_title(f"{run['editor']} on {run['model']}: edit anatomy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report_plots(reports: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Every plot that the reports allow: per report a perplexity scatter of its single edits
    and, where the editor reports ROME's anatomy, the anatomy plot; one sequence plot with a
    line per editor and sequence across all reports."""
    out_dir = Path(out_dir)
    written, series = [], []
    for doc in reports:
        run = doc["run"]
        cases = [c for c in doc["cases"] if not c.get("error")]   # an error record has nothing to plot
        singles = [c for c in cases if not c.get("sequence")]
        if singles:
            name = safe_name(f"ppl-{run['editor']}-{run['model']}-{run.get('suite') or 'cases'}.png")
            written.append(plot_ppl_scatter(run, singles, out_dir / name))
        if any(c.get("key_cosine") is not None for c in cases):
            seq = "-sequential" if all(c.get("sequence") for c in cases) else ""   # not over a single-edit run's
            name = safe_name(f"anatomy-{run['editor']}-{run['model']}-{run.get('suite') or 'cases'}{seq}.png")
            written.append(plot_anatomy(run, cases, out_dir / name))
        for seq in sorted({c["sequence"] for c in cases if c.get("sequence")}):
            series.append((f"{run['editor']} · {seq}", [c for c in cases if c.get("sequence") == seq]))
    if series:
        ppl_max = reports[0]["run"]["thresholds"]["ppl_max"]
        written.append(plot_sequences(series, out_dir / "sequence-ppl.png", ppl_max))
    return written
