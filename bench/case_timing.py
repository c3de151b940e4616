"""Per-case time breakdown of a guarded ROME edit on the embedded model (run on demand).

    python bench/case_timing.py [--editor rome] [--cases 4] [--threads N]

Prints keys, v*, update, perplexity, efficacy/anatomy and restore seconds per case, and the mean.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from editguard import check, get_editor, load_model, measure_baseline
from editguard.data import load_ppl_corpus
from editguard.suites import counterfact_hard

COLUMNS = ["seconds_keys", "seconds_v_star", "seconds_update", "perplexity", "efficacy", "anatomy", "restore"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default="rome")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    mue = load_model(args.model)
    print(f"load {args.model}: {time.perf_counter() - t:.1f}s; torch threads {torch.get_num_threads()}")
    t = time.perf_counter()
    baseline = measure_baseline(mue, load_ppl_corpus("me-ppl-50", args.data), "me-ppl-50")
    print(f"baseline ME-PPL_50 {baseline.ppl.ppl:.2f}: {time.perf_counter() - t:.1f}s")
    editor = get_editor(args.editor, data_dir=args.data)
    cases = counterfact_hard(args.data, mue.tokenizer)[: args.cases]
    # The first edit also generates and caches the context templates: time it apart.
    check(mue, editor, cases[0], baseline)

    header = f"{'case':<32}" + "".join(f"{c.replace('seconds_', ''):>11}" for c in COLUMNS) + f"{'total':>11}"
    print(header)
    totals = []
    for case in cases:
        result = check(mue, editor, case, baseline)
        row = [result.timings.get(c, 0.0) for c in COLUMNS]
        totals.append(result.seconds)
        print(f"{(case.case_id + ' ' + case.subject)[:31]:<32}" + "".join(f"{v:>11.2f}" for v in row)
              + f"{result.seconds:>11.2f}")
    print(f"mean per case: {statistics.mean(totals):.2f}s over {len(totals)} cases")


if __name__ == "__main__":
    main()
