"""Calibrate the anatomy gates on the embedded model's normal CounterFact cases (run on demand).

    python bench/calibrate_gates.py [--cases 20] [--editor rome] [--out bench/results/calibration.json]

Normal cases (subject not first) are edits that work: their ‖ΔW‖/‖W‖, denominator ratio and
key cosine show what an intact edit looks like. Prints the distribution and a suggested bound
(3 × the largest relative update norm seen).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from editguard import check, get_editor, load_model, measure_baseline
from editguard.data import load_ppl_corpus
from editguard.suites import counterfact_normal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default="rome")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--out", default="bench/results/calibration.json")
    args = parser.parse_args()

    mue = load_model(args.model)
    baseline = measure_baseline(mue, load_ppl_corpus("me-ppl-50", args.data), "me-ppl-50")
    editor = get_editor(args.editor, data_dir=args.data)
    normal = counterfact_normal(args.data)
    # Spread the sample over the whole id range: every k-th normal case.
    step = max(1, len(normal) // args.cases)
    sample = normal[::step][: args.cases]
    rows = []
    for case in sample:
        r = check(mue, editor, case, baseline)
        d = r.diagnostics
        rows.append({"case_id": case.case_id, "text": case.text, "ppl_ratio": r.ppl / baseline.ppl.ppl,
                     "update_norm_rel": d["update_norm_rel"], "denominator_ratio": d.get("denominator_ratio"),
                     "key_cosine": d.get("key_cosine"), "efficacy": r.efficacy})
        print(f"{case.case_id:>6} {case.text[:48]:<48} ppl×{rows[-1]['ppl_ratio']:.3f} "
              f"rel {d['update_norm_rel']:.3f} ratio {d.get('denominator_ratio', float('nan')):.3f} "
              f"cos {d.get('key_cosine', float('nan')):.2f} eff {r.efficacy}", flush=True)
    summary = {}
    for key in ("ppl_ratio", "update_norm_rel", "denominator_ratio", "key_cosine"):
        values = [row[key] for row in rows if row[key] is not None]
        summary[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    summary["efficacy"] = sum(bool(row["efficacy"]) for row in rows) / len(rows)
    summary["suggested_update_norm_rel_max"] = 3 * summary["update_norm_rel"]["max"]
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "editor": args.editor, "fingerprint": mue.fingerprint,
                               "summary": summary, "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
