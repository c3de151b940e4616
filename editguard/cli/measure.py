"""Measuring a model: `editguard ppl`, `stats`, `eval`."""

from __future__ import annotations

import json
import os

from editguard.cli.common import (
    DEFAULT_OUT,
    POSITIVE,
    add_model_options,
    add_options,
    analysis_cases,
    console,
    default_output,
    number_or,
    open_setup,
)
from editguard.options import SINGLE_EDIT_PPL_CORPUS


def cmd_ppl(args) -> int:
    from editguard.metrics.perplexity import perplexity
    from editguard.progress import progress_bar

    setup = open_setup(args, corpus=True)
    sentences = setup.sentences
    with progress_bar(f"perplexity {args.model} on {args.ppl_corpus}", len(sentences)) as bar:
        result = perplexity(setup.mue, sentences, bos=args.ppl_bos, progress=bar.advance)
    print(f"{args.model} {args.ppl_corpus} ({len(sentences)} sentences, {result.n_tokens} scored tokens, "
          f"BOS {args.ppl_bos}): "
          f"ppl {result.ppl:.2f} (mean per sentence), corpus ppl {result.corpus_ppl:.2f} (token-weighted)")
    return 0


def cmd_stats(args) -> int:
    from editguard.data import load_text_corpus
    from editguard.editors.covariance import second_moment

    text = load_text_corpus(args.corpus, args.data, download=args.download)
    mue = open_setup(args).mue
    layer = args.edit_layer if args.edit_layer is not None else mue.edit_layer
    mom2 = second_moment(mue, layer, text, n_tokens=args.tokens)
    print(f"{args.model} layer {layer}: E[kkᵀ] {tuple(mom2.shape)} from {args.corpus}, trace {float(mom2.trace()):.4g} "
          f"(cached under {os.path.join('$EDITGUARD_CACHE', 'stats')})")
    return 0


def cmd_eval(args) -> int:
    from pathlib import Path

    from editguard.evaluation import apply_edits, render_table, run_header, score_row, score_tasks
    from editguard.metrics.lm_eval import write_lm_eval_json
    from editguard.tasks import parse_task_list

    tasks = parse_task_list(args.tasks)
    n = None if args.n == "full" or args.limit is not None else int(args.n)
    setup = open_setup(args, editor=bool(args.editor), baseline=bool(args.editor))
    mue, editor, baseline = setup.mue, setup.editor, setup.baseline
    header, restore, steps = run_header(mue, tasks, n, args.seed, args.downstream_precision), None, []
    if args.editor:
        from editguard.editors.api import editor_hparams, editor_statistics, prepare_editor

        prepare_editor(editor, mue)   # MEND's trained network; ROME/MEMIT's statistics found and checked
        cases = analysis_cases(args.cases, mue, args.data, args.max_cases)
        mode = "sequentially" if args.sequential else "in one batch"
        print(f"applying {len(cases)} {editor.name} edits {mode} ({args.cases}); baseline {args.ppl_corpus} "
              f"{baseline.ppl.ppl:.1f}")
        restore, steps = apply_edits(mue, editor, cases, baseline, args.sequential)
        for step in steps:
            if "ppl" in step:
                print(f"  step {step['step']:2d} {step['case_id']:>6} {step['subject'][:24]:24} ppl {step['ppl']:.4g}")
        header.update(editor=editor.name, hparams=editor_hparams(editor, mue),
                      statistics=editor_statistics(editor, mue), cases=[c.case_id for c in cases],
                      case_source=args.cases, sequential=args.sequential,
                      ppl_corpus=args.ppl_corpus, ppl_bos=args.ppl_bos, baseline_ppl=baseline.ppl.ppl)
    if args.limit is not None:
        header.update(n=f"first {args.limit}", limit=args.limit)
    originals: dict = {}
    try:
        scores = score_tasks(mue, tasks, n, args.data, args.seed, precision=args.downstream_precision,
                             on_task=lambda s: print(f"  {s.task}: {s.metric} {s.accuracy:.4f} "
                                                     f"(n={s.n}, {s.seconds:.0f} s)"),
                             limit=args.limit, originals=originals)
    finally:
        if restore is not None:
            restore()
            print("weights restored and verified bit for bit against the unedited model")
    state = f"after {len(header['cases'])} {header['editor']} edits" if args.editor else "unedited"
    console().print(render_table(f"{mue.name} {state}: downstream tasks (n={header['n']}, seed {args.seed})", scores))
    out = Path(args.json or default_output("eval", mue.name, args.editor or ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": header, "edits": steps, "tasks": {k: score_row(v) for k, v in scores.items()}},
                              indent=1, default=str))
    print(f"wrote {out}")
    if args.lm_eval_json:
        write_lm_eval_json(args.lm_eval_json, scores, originals,
                           {"model": mue.name, "limit": args.limit, "editguard_state": state, **header})
        print(f"wrote {args.lm_eval_json} (lm-evaluation-harness's results layout)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("ppl", help="ME-PPL perplexity of an unedited model")
    add_model_options(p)
    add_options(p, "ppl-corpus", "ppl-bos", "download", ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.set_defaults(run=cmd_ppl)

    p = sub.add_parser("stats", help="compute and cache the MLP key covariance of a layer")
    add_model_options(p)
    add_options(p, "edit-layer", "download")
    p.add_argument("--corpus", default="wikitext-2-raw", help="text corpus the keys are taken from")
    p.add_argument("--tokens", type=POSITIVE, default=100_000, help="tokens the covariance is estimated from")
    p.set_defaults(run=cmd_stats)

    p = sub.add_parser("eval", help="score a model (unedited, or after an editor's edits) on downstream tasks")
    add_model_options(p)
    p.add_argument("--tasks", default="piqa,hellaswag,lambada,mmlu,nq-open",
                   help="comma-separated: piqa, hellaswag, lambada, mmlu, mmlu-5shot, nq-open, squad2")
    p.add_argument("--n", type=number_or("full"), default="full",
                   help="items per task: a number (a seeded random subset) or 'full' (default)")
    p.add_argument("--limit", type=POSITIVE, default=None,
                   help="the first N items of each task (per subject for MMLU), as lm-eval's --limit; "
                        "replaces --n")
    p.add_argument("--seed", type=int, default=0)
    add_options(p, "editor", editor=None,
                shown_defaults={"editor": "none: the unedited model; with one, its edits are applied before "
                                          "scoring and the weights restored after"})
    add_options(p, "hparams", "hparams-any-family", "stats-dir")
    p.add_argument("--cases", default="hardcf", help="with --editor: hardcf, normal or a case file")
    add_options(p, "max-cases", "ppl-corpus", "ppl-bos", "downstream-precision", max_cases=10,
                ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--sequential", action="store_true", help="apply the edits one after another (else one batch)")
    add_options(p, "threads")
    p.add_argument("--json", default=None, help="JSON path (default out/eval-MODEL[-EDITOR].json)")
    add_options(p, "lm-eval-json")
    p.set_defaults(run=cmd_eval, outputs={"json": False, "lm_eval_json": False}, default_outputs={"json": DEFAULT_OUT})
