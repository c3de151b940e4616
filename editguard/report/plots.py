"""PNG plots in the papers' shapes: the perplexity of every single-edited model (log scale, the
collapse line at 1000), perplexity after each step of sequential editing (one line per editor
and sequence), and the screen's risk against post-edit perplexity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editguard.gates import is_collapsed


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'editguard[plots]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_ppl_scatter(run: dict[str, Any], cases: list[dict[str, Any]], path: str | Path) -> Path:
    """Perplexity of each single-edited model, by case, log scale, with the collapse line."""
    plt = _pyplot()
    line = run["thresholds"]["ppl_max"]
    cases = sorted(cases, key=lambda c: str(c["case_id"]))
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["tab:red" if is_collapsed(c["ppl"], line) else "tab:blue" for c in cases]
    ax.scatter(range(len(cases)), [c["ppl"] for c in cases], c=colors, s=14)
    ax.axhline(line, color="tab:red", linestyle="--", linewidth=1, label=f"collapse line ({line:g})")
    ax.axhline(run["baseline_ppl"], color="gray", linestyle=":", linewidth=1,
               label=f"unedited ({run['baseline_ppl']:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("case (by id)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"perplexity ({run['ppl_corpus']})")
    ax.set_title(f"{run['editor']} on {run['model']}: one edit per case ({run.get('suite', '')})")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_sequences(series: list[tuple[str, list[dict[str, Any]]]], path: str | Path,
                   ppl_max: float = 1000.0, baseline_ppl: float | None = None) -> Path:
    """Perplexity after each edit, one line per (label, steps) series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, steps in series:
        steps = sorted(steps, key=lambda c: c["step"])
        xs = [0] + [c["step"] for c in steps]
        start = steps[0]["ppl_baseline"] if steps else baseline_ppl
        ax.plot(xs, [start] + [c["ppl"] for c in steps], marker="o", markersize=3, label=label)
    ax.axhline(ppl_max, color="tab:red", linestyle="--", linewidth=1, label=f"collapse line ({ppl_max:g})")
    ax.set_yscale("log")
    ax.set_xlabel("number of edits")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("perplexity")
    ax.set_title("perplexity during sequential editing")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_risk_vs_ppl(records: list[dict[str, Any]], path: str | Path, ppl_max: float = 1000.0) -> Path:
    """The screen's denominator ratio (before any edit) against the edited model's perplexity."""
    plt = _pyplot()
    scored = [r for r in records if r.get("screen")]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for group, color in (("top-risk", "tab:red"), ("control", "tab:blue")):
        rows = [r for r in scored if r.get("group") == group]
        ax.scatter([max(abs(r["screen"]["denominator_ratio"]), 1e-5) for r in rows], [r["ppl"] for r in rows],
                   s=14, c=color, label=group)
    ax.axhline(ppl_max, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|denominator ratio| from the screen (no edit)")
    ax.set_ylabel("perplexity after the edit")
    ax.set_title("collapse risk vs outcome")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_anatomy(run: dict[str, Any], cases: list[dict[str, Any]], path: str | Path) -> Path:
    """ROME's anatomy per edit: key cosine cos(k̄, kᵘ) against |denominator ratio|, collapsed
    edits (ppl above the line) marked; the denominator gate drawn where it applies."""
    plt = _pyplot()
    line = run["thresholds"]["ppl_max"]
    rows = [c for c in cases if c.get("key_cosine") is not None and c.get("denominator_ratio") is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for collapsed, style in ((False, dict(c="tab:blue", marker="o", label="intact")),
                             (True, dict(c="tab:red", marker="x", label=f"collapsed (ppl > {line:g})"))):
        pts = [c for c in rows if is_collapsed(c["ppl"], line) == collapsed]
        ax.scatter([c["key_cosine"] for c in pts], [max(abs(c["denominator_ratio"]), 1e-5) for c in pts],
                   s=18, **style)
    gate = run["thresholds"].get("denominator_ratio_min")
    if gate:
        ax.axhline(gate, color="gray", linestyle="--", linewidth=1, label=f"denominator gate ({gate:g})")
    ax.set_yscale("log")
    ax.set_xlim(min([-0.1] + [c["key_cosine"] - 0.05 for c in rows]), 1.02)
    ax.set_xlabel("cos(k̄, kᵘ)")
    ax.set_ylabel("|denominator ratio| (key used vs k̄)")
    ax.set_title(f"{run['editor']} on {run['model']}: edit anatomy")
    ax.legend(fontsize=8)
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
        run, cases = doc["run"], doc["cases"]
        singles = [c for c in cases if not c.get("sequence")]
        if singles:
            name = f"ppl-{run['editor']}-{run['model']}-{run.get('suite') or 'cases'}.png"
            written.append(plot_ppl_scatter(run, singles, out_dir / name))
        if any(c.get("key_cosine") is not None for c in cases):
            name = f"anatomy-{run['editor']}-{run['model']}-{run.get('suite') or 'cases'}.png"
            written.append(plot_anatomy(run, cases, out_dir / name))
        for seq in sorted({c["sequence"] for c in cases if c.get("sequence")}):
            series.append((f"{run['editor']} · {seq}", [c for c in cases if c.get("sequence") == seq]))
    if series:
        ppl_max = reports[0]["run"]["thresholds"]["ppl_max"]
        written.append(plot_sequences(series, out_dir / "sequence-ppl.png", ppl_max))
    return written
