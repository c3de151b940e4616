"""Long sequential editing: one (editor, sequence) row per invocation, merged into
bench/results/long-sequences-<model>.json, and the plot of perplexity against the number of edits.

    flock /tmp/editguard-model.lock python bench/long_sequences.py run --editor rome --sequence hard
    flock /tmp/editguard-model.lock python bench/long_sequences.py run --editor memit --sequence normal \
        --batch-size 100          # 100 cases in one edit (a one-step sequence)
    python bench/long_sequences.py table     # the table of the rows (docs/scripts/gen_measurements.py: the docs')
    python bench/long_sequences.py plot      # bench/results/plots/long-sequences-<model>.png
    python bench/long_sequences.py residuals REPORT.json ... --out FILE   # MEMIT/AlphaEdit residual per step

`run` calls `pytest suites/sequential/test_<sequence>_sequence.py --sequence-length N --ppl-every K
--ppl-corpus C` (defaults: 100 steps, perplexity every 10, ME-PPL_50; the papers measured sequences
on ME-PPL_1k, which costs ~2 min per probe on a 2-core CPU), keeps the JSON report beside the
results (`--keep-report`), and writes the row: perplexity at each probed step, the first probed
step above the collapse line, where the sequence stopped (--sequence-stop-on-collapse), efficacy
(cases whose new target won right after their own edit) and seconds per edit. Rows of the same
(editor, sequence, batch size) are replaced, so a row can be re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def results_path(model: str) -> Path:
    return RESULTS / f"long-sequences-{model}.json"


def row_from_report(doc: dict, sequence: str, command: list[str]) -> dict:
    """One row from a sequential suite's JSON report."""
    run = doc["run"]
    ppl_max = run["thresholds"]["ppl_max"]
    steps = sorted((c for c in doc["cases"] if c.get("sequence")), key=lambda c: c["step"])
    if not steps:
        raise ValueError("the report holds no sequence step: did the run fail before its first edit?")
    probed = [c for c in steps if c.get("ppl_probed", True)]
    collapsed = [c["step"] for c in probed if c["ppl"] is None or not c["ppl"] < ppl_max]
    stops = list((doc.get("sequences_stopped") or {}).values())
    per_case = [ok for c in steps for ok in (c["batch"]["efficacy"] if c.get("batch") else [c["efficacy"]])]
    cases = sum(c["batch"]["size"] if c.get("batch") else 1 for c in steps)
    batch_size = steps[0]["batch"]["size"] if steps[0].get("batch") else 1
    return {
        "editor": run["editor"], "model": run["model"], "sequence": sequence, "batch_size": batch_size,
        "steps": len(steps), "cases_edited": cases, "sequence_length": run.get("cases_selected"),
        "ppl_corpus": run["ppl_corpus"], "baseline_ppl": run["baseline_ppl"], "collapse_line": ppl_max,
        "ppl_by_step": {str(c["step"]): c["ppl"] for c in probed},
        # --downstream along the sequence: each probed step's accuracy per task, and the unedited model's
        "downstream_by_step": {str(c["step"]): {task: s["accuracy"] for task, s in c["downstream"].items()}
                               for c in probed if c.get("downstream")},
        "downstream_unedited": next(({task: s["unedited"] for task, s in c["downstream"].items()}
                                     for c in probed if c.get("downstream")), {}),
        "first_collapse_step": collapsed[0] if collapsed else None,
        "stopped_at": stops[0]["step"] if stops else None,
        "stop_reason": stops[0].get("reason") if stops else None,
        "efficacy": sum(bool(ok) for ok in per_case), "efficacy_of": len(per_case),
        "steps_passing_all_gates": sum(c["passed"] for c in steps),
        "seconds_per_edit": statistics.mean(c["seconds"] for c in steps),
        "command": " ".join(command),
        "step_records": [{k: c.get(k) for k in ("step", "case_id", "ppl", "ppl_probed", "efficacy", "passed",
                                                "failed_gates", "ppl_baseline", "downstream")} for c in steps],
    }


def merge_row(path: Path, row: dict) -> None:
    doc = json.loads(path.read_text()) if path.exists() else {"rows": []}
    key = (row["editor"], row["sequence"], row["batch_size"])
    doc["rows"] = [r for r in doc["rows"] if (r["editor"], r["sequence"], r.get("batch_size", 1)) != key] + [row]
    doc["rows"].sort(key=lambda r: (r.get("batch_size", 1), r["editor"], r["sequence"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def run(args) -> None:
    length = args.steps * args.batch_size if args.batch_size > 1 and args.steps else args.steps
    out = Path(args.keep_report) if args.keep_report else Path(tempfile.mkdtemp()) / "report.json"
    command = [sys.executable, "-m", "pytest", f"suites/sequential/test_{args.sequence}_sequence.py",
               f"--editor={args.editor}", f"--model={args.model}", "--sequence-length", str(length),
               "--ppl-every", str(args.ppl_every), f"--ppl-corpus={args.ppl_corpus}", "--batch-size",
               str(args.batch_size), "--editguard-json", str(out), "-q", "-p", "no:cacheprovider", *args.pytest_args]
    print(" ".join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(command, cwd=REPO, env=env, check=False)  # exit 1 when a step fails a gate: expected
    if not out.exists():
        raise SystemExit(f"no JSON report at {out}: the run failed before writing it (see the output above)")
    doc = json.loads(out.read_text())
    if doc.get("complete") is False:   # interrupted: a row of part of a sequence must not replace a whole one
        raise SystemExit(f"the report at {out} is incomplete ({doc.get('cases_done')} steps done, "
                         f"{len(doc.get('cases_not_run') or [])} not run): no row written")
    shown = [Path(p).name if Path(p).is_absolute() else p for p in command[1:]]
    row = row_from_report(doc, args.sequence, ["python", *shown])
    merge_row(results_path(args.model), row)
    print(json.dumps({k: v for k, v in row.items() if k != "step_records"}, indent=1))


def table(args) -> None:
    rows = json.loads(results_path(args.model).read_text())["rows"]
    print("| editor | sequence | batch | steps run | perplexity at each probed step (corpus) | first collapse step | "
          "efficacy | s/edit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ppl = ", ".join(f"{k}: {v:.4g}" for k, v in r["ppl_by_step"].items()) + f" ({r['ppl_corpus']})"
        stop = f" (stopped at {r['stopped_at']})" if r.get("stopped_at") else ""
        planned = r["sequence_length"] // r["batch_size"]
        print(f"| {r['editor']} | {r['sequence']} | {r['batch_size']} | {r['steps']}/{planned}{stop} | {ppl} | "
              f"{r['first_collapse_step'] or 'none'} | {r['efficacy']}/{r['efficacy_of']} | "
              f"{r['seconds_per_edit']:.1f} |")


def plot(args) -> None:
    sys.path.insert(0, str(REPO))
    from editguard.report.plots import plot_sequences

    rows = json.loads(results_path(args.model).read_text())["rows"]
    series = [(f"{r['editor']} · {r['sequence']} ({r['ppl_corpus']})", r["step_records"])
              for r in rows if r["batch_size"] == 1]
    path = Path(args.out or RESULTS / "plots" / f"long-sequences-{args.model}.png")
    print(plot_sequences(series, path, rows[0]["collapse_line"]))


def residuals(args) -> None:
    """MEMIT's and AlphaEdit's own residual before and after their layer updates, per step, from
    reports kept with `run --keep-report` (their records' diagnostics)."""
    runs = []
    for report in args.reports:
        doc = json.loads(Path(report).read_text())
        steps = sorted((c for c in doc["cases"] if c.get("sequence")), key=lambda c: c["step"])
        if not steps or "residual_norm_initial" not in steps[0].get("diagnostics", {}):
            raise SystemExit(f"{report}: no MEMIT/AlphaEdit sequence steps with residual diagnostics")
        runs.append({"model": doc["run"]["model"], "editor": doc["run"]["editor"], "sequence": steps[0]["sequence"],
                     "report": Path(report).name,
                     "batch_size": steps[0]["batch"]["size"] if steps[0].get("batch") else 1,
                     "steps": [{"step": c["step"], "case_id": c["case_id"], "ppl": c["ppl"],
                                "update_norm_rel": c["update_norm_rel"],
                                **{k: c["diagnostics"][k] for k in ("residual_norm_initial", "residual_norm_final")}}
                               for c in steps]})
    out = Path(args.out)
    out.write_text(json.dumps({"what": "|target - block output| at the last edited layer (mean over the batch) "
                                       "before and after the layer updates, per step, with the step's largest "
                                       "‖ΔW‖/‖W‖", "runs": runs}, indent=1) + "\n")
    print(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one (editor, sequence) row and merge it into the results")
    p.add_argument("--editor", required=True)
    p.add_argument("--sequence", choices=("hard", "normal"), required=True)
    p.add_argument("--steps", type=int, default=100, help="sequence steps (with --batch-size B: B cases each)")
    p.add_argument("--ppl-every", type=int, default=10)
    p.add_argument("--ppl-corpus", default="me-ppl-50")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--keep-report", default=None, help="write the pytest JSON report here")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    for name in ("table", "plot"):
        q = sub.add_parser(name)
        q.add_argument("--model", default="smollm2-135m")
        if name == "plot":
            q.add_argument("--out", default=None)
    p.add_argument("--model", default="smollm2-135m")
    r = sub.add_parser("residuals", help="MEMIT/AlphaEdit residual per step from kept reports")
    r.add_argument("reports", nargs="+")
    r.add_argument("--out", required=True)
    args = parser.parse_args()
    {"run": run, "table": table, "plot": plot, "residuals": residuals}[args.command](args)


if __name__ == "__main__":
    main()
