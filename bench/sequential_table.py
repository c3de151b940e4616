"""The papers' sequential-editing table for one model, from `suites/sequential` JSON reports.

    for e in rome c-rome r-rome memit alphaedit ft mend; do
        pytest suites/sequential --editor=$e --model=smollm2-135m --ppl-corpus=me-ppl-50 \
            --editguard-json=bench/results/sequential-$e-smollm2-135m.json
    done
    python bench/sequential_table.py bench/results/sequential-*-smollm2-135m.json

One row per editor and sequence (hard: the first 10 mined HardCF cases; normal: 10 normal
CounterFact cases): perplexity after the last edit and the highest along the way, efficacy (the
new target outranks the true one right after its edit), steps that passed every gate, and the
mean wall time per edit.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict


def rows(reports: list[dict]) -> list[dict]:
    out = []
    for report in reports:
        by_sequence = defaultdict(list)
        for case in report["cases"]:
            if case.get("sequence"):
                by_sequence[case["sequence"]].append(case)
        for sequence, cases in sorted(by_sequence.items()):
            cases.sort(key=lambda c: c["step"])
            ppl = [c["ppl"] for c in cases]
            out.append({"editor": report["run"]["editor"], "sequence": sequence.removesuffix("_sequence"),
                        "steps": len(cases), "baseline_ppl": report["run"]["baseline_ppl"],
                        "final_ppl": ppl[-1], "max_ppl": max(ppl),
                        "efficacy": sum(bool(c["efficacy"]) for c in cases), "passed": sum(c["passed"] for c in cases),
                        "seconds_per_edit": statistics.mean(c["seconds"] for c in cases)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("reports", nargs="+")
    parser.add_argument("-o", "--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    table = rows([json.load(open(path)) for path in args.reports])
    print("| editor | sequence | steps | ME-PPL after the last edit | highest | efficacy | steps passing all gates | s/edit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['editor']} | {r['sequence']} | {r['steps']} | {r['final_ppl']:.4g} | {r['max_ppl']:.4g} | "
              f"{r['efficacy']}/{r['steps']} | {r['passed']}/{r['steps']} | {r['seconds_per_edit']:.1f} |")
    if table:
        print(f"(unedited: {table[0]['baseline_ppl']:.1f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
