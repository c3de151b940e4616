"""CounterFact scores of an editor (default MEND) on normal and hard cases of the embedded model
(run on demand; MEND needs `editguard train-mend --model M` first).

    python bench/mend_scores.py [--editor mend] [--normal 10] [--hard 4] [--threads 1] [--out FILE]

For each case: efficacy, generalization (paraphrase) and locality (neighbourhood prompt) before
and after the edit, ME-PPL_50, the largest ‖ΔW‖/‖W‖ and blast radius, the editor's own edit NLL
before/after; the model is restored (verified) after every case. Cases: the first N of the
counterfact suite's normal sample and of the model's HardCF list, as the suites pick them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from editguard import get_editor, load_model
from editguard.data import load_ppl_corpus
from editguard.metrics.anatomy import normal_text_keys, update_anatomy
from editguard.metrics.efficacy import edit_scores
from editguard.metrics.perplexity import perplexity
from editguard.models import WeightSnapshot
from editguard.suites import hardcf, normal_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default="mend")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--normal", type=int, default=10)
    parser.add_argument("--hard", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--out", default=None, help="JSON (default bench/results/scores-EDITOR-MODEL.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    mue = load_model(args.model)
    editor = get_editor(args.editor, data_dir=args.data)
    sentences = load_ppl_corpus("me-ppl-50", args.data)
    hard = list(hardcf(mue.name, args.data, load=lambda: mue))
    groups = {"normal": list(normal_sample(len(hard), args.data))[: args.normal], "hard": hard[: args.hard]}
    base_ppl = perplexity(mue, sentences).ppl
    touched = editor.touched_parameters(mue, groups["normal"][:1])
    # blast radius as the guard measures it: inputs on the first 16 sentences, before any edit
    keys = normal_text_keys(mue, [n.rpartition(".")[0] for n in touched], sentences[:16], max_keys=512)
    print(f"{args.editor} on {mue.name}; unedited ME-PPL_50 {base_ppl:.2f}")
    rows = []
    for group, cases in groups.items():
        for case in cases:
            before = edit_scores(mue, case)
            snapshot = WeightSnapshot(mue.model, editor.touched_parameters(mue, [case]))
            t = time.perf_counter()
            try:
                report = editor.apply(mue, [case])
                seconds = time.perf_counter() - t
                after = edit_scores(mue, case)
                ppl = perplexity(mue, sentences).ppl
                anatomy = update_anatomy(mue, {n: snapshot.saved(n) for n in snapshot.names},
                                         {n: keys[n.rpartition(".")[0]] for n in snapshot.names})
            finally:
                snapshot.restore()
            d = report.diagnostics
            row = {"group": group, "case_id": case.case_id, "text": case.text, "target_new": case.target_new,
                   "efficacy_before": before.efficacy, "efficacy": after.efficacy,
                   "generalization_before": before.generalization, "generalization": after.generalization,
                   "locality_before": before.locality, "locality": after.locality, "ppl": ppl,
                   "update_norm_rel": anatomy["update_norm_rel_max"], "blast_radius": anatomy["blast_radius_max"],
                   "edit_nll_before": d.get("edit_nll_before"), "edit_nll_after": d.get("edit_nll_after"),
                   "seconds_edit": seconds, "trained_key": d.get("trained_key"),
                   "trained_steps": d.get("trained_steps")}
            rows.append(row)
            print(f"  {group:6} {case.case_id:>6} {case.text[:40]!r:42} -> {case.target_new[:12]!r:14} "
                  f"eff {row['efficacy']:.0f} gen {row['generalization']:.0f} loc {row['locality']:.0f}  "
                  f"ppl {ppl:9.2f}  ‖ΔW‖/‖W‖ {row['update_norm_rel']:.3g}  NLL {row['edit_nll_before']:.2f} -> "
                  f"{row['edit_nll_after']:.2f}  {seconds:.1f} s")
    summary = {}
    for group in groups:
        g = [r for r in rows if r["group"] == group]
        if not g:
            continue
        summary[group] = {k: statistics.mean(r[k] for r in g) for k in
                          ("efficacy_before", "efficacy", "generalization_before", "generalization", "locality_before",
                           "locality", "ppl", "update_norm_rel", "blast_radius", "edit_nll_before", "edit_nll_after")}
        summary[group]["ppl_max"] = max(r["ppl"] for r in g)
        summary[group]["n"] = len(g)
        s = summary[group]
        print(f"{group}: n={len(g)} efficacy {s['efficacy_before']:.2f} -> {s['efficacy']:.2f}, generalization "
              f"{s['generalization_before']:.2f} -> {s['generalization']:.2f}, locality {s['locality_before']:.2f} -> "
              f"{s['locality']:.2f}, ME-PPL_50 mean {s['ppl']:.2f} (max {s['ppl_max']:.2f}), mean ‖ΔW‖/‖W‖ "
              f"{s['update_norm_rel']:.3g}, edit NLL {s['edit_nll_before']:.2f} -> {s['edit_nll_after']:.2f}")
    out = Path(args.out or f"bench/results/scores-{args.editor}-{mue.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"editor": args.editor, "model": mue.name, "hparams": editor.hparams(mue),
                               "baseline_ppl": base_ppl, "summary": summary, "rows": rows}, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
