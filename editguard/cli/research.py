"""Research commands: `editguard analyze` (the Fall of ROME analyses), `train-mend`."""

from __future__ import annotations

import json

from editguard.cli.common import (
    DEFAULT_OUT,
    POSITIVE,
    add_model_options,
    add_options,
    analysis_cases,
    default_output,
    open_setup,
    print_table,
)
from editguard.options import SINGLE_EDIT_PPL_CORPUS


def cmd_analyze(args) -> int:
    from pathlib import Path

    from editguard.analysis import analyze_positions, analyze_prefix_cure, summarize_positions, summarize_prefix_cure
    from editguard.editors.api import editor_hparams
    from editguard.progress import progress_bar
    from editguard.runinfo import model_fields

    setup = open_setup(args, editor=True, baseline=True)
    mue, editor, thresholds, baseline = setup.mue, setup.editor, setup.thresholds, setup.baseline
    header = {**model_fields(mue), "editor": editor.name, "hparams": editor_hparams(editor, mue),
              "ppl_corpus": args.ppl_corpus, "ppl_bos": args.ppl_bos, "baseline_ppl": baseline.ppl.ppl,
              "thresholds": thresholds.to_dict()}
    if args.what == "positions":
        subject_first = [c for c in analysis_cases(args.cases, mue, args.data, 10**9) if c.subject_first]
        cases = subject_first[: args.max_cases]
        with progress_bar(f"positions: {len(cases)} cases × 3 edits", 3 * len(cases)) as bar:
            rows = analyze_positions(mue, editor, cases, baseline, thresholds, on_row=lambda r: bar.advance(1))
        summary = summarize_positions(rows, thresholds.ppl_max)
        print_table(f"{editor.name} on {mue.name}: subject position "
                    f"(baseline {args.ppl_corpus} {baseline.ppl.ppl:.1f})",
                    summary, ["condition", "n", "key_cosine_median", "denominator_ratio_median", "ppl_median",
                              "ppl_max", "collapsed"])
    else:
        groups = {"hard": analysis_cases(args.cases, mue, args.data, args.max_cases),
                  "normal": analysis_cases("normal", mue, args.data, args.max_cases)}
        n = sum(len(g) for g in groups.values())
        with progress_bar(f"prefix cure: {n} edits", n) as bar:
            rows = analyze_prefix_cure(mue, editor, groups, baseline, thresholds, on_row=lambda r: bar.advance(1))
        summary = summarize_prefix_cure(rows)
        print_table(f"{editor.name} on {mue.name}: scores without and with the test-time prefix", summary,
                    ["group", "test", "n", "efficacy", "generalization", "locality"])
    out = Path(args.json or default_output("analyze", args.what, mue.name, editor.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": header, "summary": summary, "rows": rows}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


def cmd_train_mend(args) -> int:
    import torch

    from editguard.editors.mend.hparams import edited_matrices, resolve_hparams
    from editguard.editors.mend.store import train_and_cache
    from editguard.mend_data import locality_sentences, training_cases
    from editguard.progress import progress_bar

    args.editor = "mend"   # --hparams is MEND's: editguard's keys, or an EasyEdit MEND file (translated)
    setup = open_setup(args)
    mue = setup.mue
    hp = resolve_hparams(mue, setup.config.hparams)
    cases, excluded = training_cases(mue.name, args.cases, args.data, mue.tokenizer)
    loc = [] if args.no_ppl_locality else locality_sentences(args.data)
    matrices = edited_matrices(mue, hp)
    source = "CounterFact's train split" if args.cases == "counterfact" else args.cases
    print(f"MEND on {mue.name}: {len(cases)} training cases from {source}"
          + (f" ({excluded} left out: cases the shipped suites edit)" if excluded else "")
          + f", {len(loc)} ME-PPL sentences (not in ME-PPL_50/1k) for locality; {len(matrices)} matrices "
          f"({', '.join(m.label for m in matrices)}); {args.steps} steps of {hp.batch_size} edits, "
          f"{torch.get_num_threads()} CPU thread(s)")
    every = max(1, args.steps // 10)
    with progress_bar(f"train-mend {mue.name}", args.steps) as bar:
        def show(step, r):
            bar.advance(1)
            if step % every == 0 or step == 1:
                print(f"  step {step:5d}  edit NLL {r['edit_nll_before']:6.3f} -> {r['edit_nll_after']:6.3f}  "
                      f"loc KL {r['loc_kl']:.4f}  nbr KL {r.get('neighbour_kl', 0.0):.3f}  α {r['edit_lr_mean']:.2e}  "
                      f"‖ΔW‖/‖W‖ {r['update_norm_rel_max']:.3g} ({hp.batch_size} edits)  {r['seconds']:.2f} s/step")
        trained, fresh = train_and_cache(mue, cases, hp, args.steps, loc, progress=show, retrain=args.retrain)
    if not fresh:
        print(f"already trained (same model, data, hyperparameters and steps): {trained.path}; --retrain trains again")
    print("loss curve (means over stretches of training): steps, edit NLL before -> after the edit, locality KL "
          "(all tokens; at the neighbourhood answers), α")
    for row in trained.summary(windows=5):
        print(f"  {row['from_step']:5d}-{row['to_step']:<5d}  "
              f"{row['edit_nll_before']:6.3f} -> {row['edit_nll_after']:6.3f}"
              f"  KL {row['loc_kl']:.4f}  nbr KL {row.get('neighbour_kl', 0.0):.3f}  α {row['edit_lr_mean']:.2e}"
              f"  {row['seconds']:.2f} s/step")
    print(f"trained {trained.steps} steps in {trained.seconds:.0f} s ({trained.seconds / trained.steps:.2f} s/step); "
          f"cached as {trained.path} (key {trained.key}); `--editor=mend` uses it for {mue.name}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("analyze", help="the Fall of ROME analyses: subject position, test-time prefix cure")
    add_model_options(p)
    p.add_argument("what", choices=["positions", "prefix"],
                   help="positions: subject first vs moved later vs first position swapped (ROME edits); "
                        "prefix: efficacy/generalization/locality with and without the test-time prefix")
    p.add_argument("--cases", default="hardcf", help="hardcf (the model's mined list) or a case file")
    add_options(p, "editor", editor=None, shown_defaults={"editor": "rome for positions, c-rome for prefix"})
    add_options(p, "max-cases", "ppl-corpus", "ppl-bos", "ppl-threshold", max_cases=10,
                ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--json", default=None, help="default out/analyze-WHAT-MODEL-EDITOR.json")
    p.set_defaults(run=cmd_analyze, outputs={"json": False}, default_outputs={"json": DEFAULT_OUT})

    p = sub.add_parser("train-mend",
                       help="train MEND's editor network for a model and cache it (needed by --editor=mend)")
    add_model_options(p)
    p.add_argument("--steps", type=POSITIVE, default=300, help="training steps (default 300)")
    p.add_argument("--cases", default="counterfact",
                   help="counterfact (its train split, without the cases the suites edit) or a case file")
    add_options(p, "hparams", "hparams-any-family")
    add_options(p, "threads", threads=1)   # 1: training shares the machine with other jobs
    p.add_argument("--no-ppl-locality", action="store_true",
                   help="locality text from the cases' neighbourhood prompts only")
    p.add_argument("--retrain", action="store_true", help="train even if this exact editor is cached")
    p.set_defaults(run=cmd_train_mend)
