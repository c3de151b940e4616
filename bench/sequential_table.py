"""The papers' sequential-editing table for one model, from `suites/sequential` JSON reports.

    for e in rome c-rome r-rome memit alphaedit ft mend; do
        pytest suites/sequential --editor=$e --model=smollm2-135m --ppl-corpus=me-ppl-50 \
            --editguard-json=bench/results/sequential-$e-smollm2-135m.json
    done
    python bench/sequential_table.py bench/results/sequential-*-smollm2-135m.json [--unedited]

One row per editor and sequence (hard: the first 10 mined HardCF cases; normal: 10 normal
CounterFact cases): perplexity after the last edit and the highest along the way, efficacy (the
new target outranks the true one right after its edit), steps that passed every gate, and the
mean wall time per edit. `--unedited` adds the chance level: how many of the same cases the
unedited model already prefers the new target on (loads the model).
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


def unedited_efficacy(reports: list[dict]) -> dict[str, tuple[int, int]]:
    """Per sequence: (cases whose new target the unedited model already prefers, cases)."""
    from editguard import load_model
    from editguard.editors.keys import fill
    from editguard.metrics.efficacy import efficacy

    mue = load_model(reports[0]["run"]["model"], "cpu")
    cases = {}
    for report in reports:
        for c in report["cases"]:
            if c.get("sequence"):
                cases.setdefault(c["sequence"].removesuffix("_sequence"), {})[c["case_id"]] = c
    return {seq: (sum(bool(efficacy(mue, fill(c["prompt"], c["subject"]), c["target_new"], c["target_true"]).success)
                      for c in by_id.values()), len(by_id)) for seq, by_id in sorted(cases.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("reports", nargs="+")
    parser.add_argument("-o", "--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--unedited", action="store_true", help="add the unedited model's efficacy (chance level)")
    args = parser.parse_args()
    reports = [json.load(open(path)) for path in args.reports]
    table = rows(reports)
    print("| editor | sequence | steps | ME-PPL after the last edit | highest | efficacy | "
          "steps passing all gates | s/edit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['editor']} | {r['sequence']} | {r['steps']} | {r['final_ppl']:.4g} | {r['max_ppl']:.4g} | "
              f"{r['efficacy']}/{r['steps']} | {r['passed']}/{r['steps']} | {r['seconds_per_edit']:.1f} |")
    if args.unedited:
        for seq, (k, n) in unedited_efficacy(reports).items():
            print(f"| unedited | {seq} | 0 | {table[0]['baseline_ppl']:.4g} | | {k}/{n} | | |")
    elif table:
        print(f"(unedited: {table[0]['baseline_ppl']:.1f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
