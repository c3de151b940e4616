"""Verdicts under --editguard-edit-precision bfloat16 against float32 (run on demand; the evidence
the option's default rests on).

    flock /tmp/model-jobs.lock python bench/edit_precision.py run --model smollm2-135m --suite hardcf
    flock /tmp/model-jobs.lock python bench/edit_precision.py run --model smollm2-135m --suite counterfact \
        --max-cases 20
    python bench/edit_precision.py table

`run` runs `pytest suites/<suite> --model M --editor rome --editguard-edit-precision P` once per
precision (float32, then bfloat16), in this order, as separate processes, and keeps each run's case
records (verdict, failed gates, perplexity, denominator ratio, update norm, efficacy) and its wall
time; `editguard compare --equal` of the two reports is kept beside them. The row goes into
bench/results/edit-precision-<model>.json (a row per suite, replaced when re-run). `table` prints
per row: cases, pass/fail equal, verdicts equal, failed gates equal, the largest relative
difference of each number over the cases both precisions kept below the collapse line (and over
all cases), and both wall times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PRECISIONS = ("float32", "bfloat16")
NUMBERS = ("ppl", "denominator_ratio", "update_norm_rel")
KEPT = ("case_id", "verdict", "passed", "failed_gates", "efficacy", *NUMBERS)


def results_path(model: str) -> Path:
    return RESULTS / f"edit-precision-{model}.json"


def cpu_name() -> str:
    sys.path.insert(0, str(REPO / "bench"))
    from lm_eval_parity import cpu_name as name  # the one reading of /proc/cpuinfo the benches share

    return name()


def run_suite(model: str, suite: str, precision: str, max_cases: int | None, report: Path) -> float:
    command = [sys.executable, "-m", "pytest", f"suites/{suite}", f"--model={model}", "--editor=rome",
               f"--editguard-edit-precision={precision}", f"--editguard-json={report}", "-q",
               "-p", "no:cacheprovider"]
    if max_cases:
        command.append(f"--max-cases={max_cases}")
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):   # 1: some case failed its gates, which is what hard cases do
        raise SystemExit(f"pytest exited {done.returncode} for {precision}")
    return seconds


def relative(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == 0:
        return None
    return abs(b - a) / abs(a)


def compare_rows(first: list[dict], second: list[dict], collapse: float) -> dict:
    by_id = {c["case_id"]: c for c in second}
    pairs = [(c, by_id[c["case_id"]]) for c in first if c["case_id"] in by_id]
    differing = [a["case_id"] for a, b in pairs if a["verdict"] != b["verdict"]]
    gates_differing = [a["case_id"] for a, b in pairs if sorted(a["failed_gates"]) != sorted(b["failed_gates"])]
    efficacy_differing = [a["case_id"] for a, b in pairs if a["efficacy"] != b["efficacy"]]
    below = [(a, b) for a, b in pairs if (a["ppl"] or math.inf) < collapse and (b["ppl"] or math.inf) < collapse]

    def largest(among: list) -> dict:
        out = {}
        for name in NUMBERS:
            kept = [x for x in (relative(a[name], b[name]) for a, b in among) if x is not None]
            out[name] = max(kept) if kept else None
        return out

    return {"cases": len(pairs), "passed_equal": sum(a["passed"] == b["passed"] for a, b in pairs),
            "verdicts_equal": len(pairs) - len(differing), "verdicts_differ": differing,
            "largest_relative_difference": largest(pairs),
            "failed_gates_equal": len(pairs) - len(gates_differing), "failed_gates_differ": gates_differing,
            "efficacy_differs": efficacy_differing, "largest_relative_difference_below_collapse": largest(below),
            "cases_below_collapse_in_both": sum((a["ppl"] or math.inf) < collapse and (b["ppl"] or math.inf) < collapse
                                                for a, b in pairs)}


def cmd_run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs, reports = {}, {}
        for precision in PRECISIONS:
            reports[precision] = Path(tmp) / f"{precision}.json"
            seconds = run_suite(args.model, args.suite, precision, args.max_cases, reports[precision])
            doc = json.loads(reports[precision].read_text())
            runs[precision] = {"seconds": seconds, "baseline_ppl": doc["run"]["baseline_ppl"],
                               "edit_precision": doc["run"]["edit_precision"],
                               "cases": [{k: c.get(k) for k in KEPT} for c in doc["cases"]]}
        collapse = doc["run"]["thresholds"]["ppl_max"]
        equal = subprocess.run([sys.executable, "-m", "editguard.cli", "compare", "--equal", "--max-lines", "80",
                                str(reports["float32"]), str(reports["bfloat16"])], cwd=REPO,
                               capture_output=True, text=True)
    row = {"model": args.model, "suite": args.suite, "editor": "rome", "max_cases": args.max_cases,
           "cpu": cpu_name(), "threads": os.cpu_count(), "collapse_line": collapse,
           "comparison": compare_rows(runs["float32"]["cases"], runs["bfloat16"]["cases"], collapse),
           "editguard_compare_equal": (equal.stdout + equal.stderr).strip().splitlines(), "runs": runs,
           "command": f"python bench/edit_precision.py run --model {args.model} --suite {args.suite}"
                      + (f" --max-cases {args.max_cases}" if args.max_cases else "")}
    path = results_path(args.model)
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in rows if r["suite"] != args.suite] + [row]
    path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(table_lines(row))


def _largest(values: dict) -> str:
    return ", ".join(f"{name} {value:.2e}" if value is not None else f"{name} -" for name, value in values.items())


def table_lines(row: dict) -> str:
    runs = row["runs"]
    c = compare_rows(runs["float32"]["cases"], runs["bfloat16"]["cases"], row["collapse_line"])
    largest = _largest(c["largest_relative_difference_below_collapse"])
    differ = f" (differ: {', '.join(c['verdicts_differ'])})" if c["verdicts_differ"] else ""
    return (f"{row['model']} {row['suite']} ({row['cpu']}): {c['cases']} cases, passed/failed equal "
            f"{c['passed_equal']}/{c['cases']}, verdicts equal {c['verdicts_equal']}/{c['cases']}{differ}"
            f", failed gates equal {c['failed_gates_equal']}/{c['cases']}, efficacy differs in "
            f"{len(c['efficacy_differs'])}; largest relative difference over the {c['cases_below_collapse_in_both']} "
            f"cases below the collapse line in both: {largest} (over all cases: "
            f"{_largest(c['largest_relative_difference'])}); baseline ME-PPL float32 "
            f"{runs['float32']['baseline_ppl']:.3f}, bfloat16 {runs['bfloat16']['baseline_ppl']:.3f}; wall time "
            f"float32 {runs['float32']['seconds']:.0f} s, bfloat16 {runs['bfloat16']['seconds']:.0f} s")


def cmd_table(args) -> None:
    for path in sorted(RESULTS.glob("edit-precision-*.json")):
        for row in json.loads(path.read_text())["rows"]:
            print(table_lines(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--suite", choices=("hardcf", "counterfact"), default="hardcf")
    p.add_argument("--max-cases", type=int, default=None)
    p.set_defaults(run=cmd_run)
    sub.add_parser("table").set_defaults(run=cmd_table)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
