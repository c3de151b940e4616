"""The papers' "further validation" table from `editguard eval` JSON files: one column per run
(unedited, after sequential ROME, after sequential C-ROME, ...), one row per task, accuracy with
its two-sided 95% Wilson interval, the task's random baseline, and ME-PPL after the last edit.

    editguard eval --tasks piqa,hellaswag,lambada,mmlu --n 100 --json unedited.json
    editguard eval --tasks piqa,hellaswag,lambada,mmlu --n 100 --editor rome --cases hardcf --max-cases 10 \\
        --sequential --json rome.json
    editguard eval ... --editor c-rome ... --json c-rome.json
    python bench/downstream_table.py unedited.json rome.json c-rome.json -o bench/results/downstream-validation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def label(doc: dict) -> str:
    run = doc["run"]
    if not run.get("editor"):
        return "unedited"
    mode = "sequential" if run.get("sequential") else "batch"
    return f"{run['editor']} ({len(run['cases'])} {run.get('case_source', '')} edits, {mode})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    docs = [json.loads(Path(f).read_text()) for f in args.files]
    columns = [label(d) for d in docs]
    tasks = list(dict.fromkeys(t for d in docs for t in d["tasks"]))
    lines = ["| task (metric, n) | random | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for task in tasks:
        first = next(d["tasks"][task] for d in docs if task in d["tasks"])
        cells = []
        for d in docs:
            s = d["tasks"].get(task)
            cells.append("–" if s is None else f"{s['accuracy']:.3f} [{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]")
        lines.append(f"| {task} ({first['metric']}, {first['n']}) | {first['random']:.3g} | "
                     + " | ".join(cells) + " |")
    ppl = []
    for d in docs:
        steps = [e for e in d.get("edits", []) if "ppl" in e]
        ppl.append(f"{steps[-1]['ppl']:.3g}" if steps else f"{d['run'].get('baseline_ppl', float('nan')):.4g}"
                   if d["run"].get("baseline_ppl") else "–")
    lines.append("| ME-PPL_50 after the last edit | | " + " | ".join(ppl) + " |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"columns": columns, "table_markdown": table,
                               "runs": {c: d for c, d in zip(columns, docs)}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
