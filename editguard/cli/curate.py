"""Curating cases and gates: `editguard screen`, `mine`, `calibrate`, `filter`."""

from __future__ import annotations

import json

from editguard.cli.common import (
    DEFAULT_OUT,
    NON_NEGATIVE,
    POSITIVE,
    add_model_options,
    add_options,
    default_output,
    number_or,
    open_setup,
)
from editguard.errors import DataError
from editguard.options import (
    DEFAULT_CALIBRATION_CASES,
    DEFAULT_CALIBRATION_SEED,
    SINGLE_EDIT_PPL_CORPUS,
    UPDATE_NORM_REL,
)
from editguard.run.recorder import prove_writable

# The screen's default, without importing torch for `editguard --help`.
DEFAULT_SCREEN_TEMPLATES = 11


def cmd_screen(args) -> int:
    from editguard.editors.rome import RomeHparams
    from editguard.screen import run_screen, write_screen
    from editguard.suites import load_case_source

    cases = load_case_source(args.cases, args.data, download=args.download)
    mue = open_setup(args).mue
    overrides = {"mom2_adjustment": args.mom2_adjustment}
    if args.edit_layer is not None:
        overrides["layer"] = args.edit_layer
    hparams = RomeHparams.for_family(mue.family.name, overrides)
    n_templates = None if args.templates == "all" else int(args.templates)
    doc = run_screen(mue, cases, hparams, n_templates, data_dir=args.data, batch_size=args.batch_size)
    out = args.json or default_output("screen", mue.name)
    json_path, csv_path = write_screen(doc, out)
    rows = doc["rows"]
    print(f"screened {len(rows)} cases of {args.cases} on {mue.name} layer {doc['layer']} in {doc['seconds']:.0f} s "
          f"({doc['templates']} of {doc['templates_total']} templates); riskiest:")
    for rank, row in enumerate(rows[: args.show], 1):
        print(f"  {rank:3d}. case {row['case_id']:>6} {row['subject']!r:32.32} "
              f"denominator ratio {row['denominator_ratio']:8.4f}"
              f"  cos(k̄,kᵘ) {row['key_cosine']:.3f}")
    print(f"wrote {json_path} and {csv_path}")
    return 0


def cmd_calibrate(args) -> int:
    from pathlib import Path

    from editguard.calibration import calibrate, shipped_name, store, write_copy
    from editguard.suite_files import find_mined_suite, project_suites_dir, refuse_installed_path
    from editguard.suites import normal_sample

    out = Path(args.json) if args.json else project_suites_dir() / "calibration" / shipped_name(args.model, args.editor)
    refuse_installed_path(out)
    prove_writable("--json", out)
    cases = normal_sample(args.cases, args.data, download=args.download, seed=args.seed)
    setup = open_setup(args, editor=True, baseline=True)
    mue, editor, baseline = setup.mue, setup.editor, setup.baseline
    mined_path = find_mined_suite(mue.name)
    mined = json.loads(mined_path.read_text()) if mined_path is not None else None
    print(f"calibrating {args.editor} gates on {len(cases)} normal CounterFact cases of {mue.name} "
          f"(fingerprint {mue.fingerprint}, baseline {args.ppl_corpus} {baseline.ppl.ppl:.2f}, BOS {args.ppl_bos})",
          flush=True)

    def show(row) -> None:
        shown = {k: float("nan") if row[k] is None else row[k]
                 for k in ("ppl_ratio", UPDATE_NORM_REL, "denominator_ratio", "blast_radius")}
        print(f"{row['case_id']:>6} {row['text'][:48]:<48} ppl×{shown['ppl_ratio']:.3f} "
              f"‖ΔW‖/‖W‖ {shown[UPDATE_NORM_REL]:.3f} ratio {shown['denominator_ratio']:.3f} "
              f"blast {shown['blast_radius']:.3g} eff {row['efficacy']}", flush=True)

    calibration = calibrate(mue, editor, cases, baseline, mined=mined, seed=args.seed,
                            cases_source=cases.description, progress=show)
    cached = store(calibration)
    write_copy(calibration, out)
    d = calibration.doc
    for key, dist in d["distributions"].items():
        print(f"  {key:<18} min {dist['min']:.4g}  median {dist['median']:.4g}  max {dist['max']:.4g}  (n={dist['n']})")
    print(f"{calibration.describe()}; bounds: " + ", ".join(f"{k}={v:.4g}" for k, v in d["bounds"].items()))
    print(f"rule: {d['rule']}")
    print(f"stored in the cache ({cached}) and at {out}")
    return 0


def cmd_mine(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from editguard.editors.rome import RomeHparams
    from editguard.mining import mine, pick_candidates, risk_correlation, write_mined_suite
    from editguard.progress import progress_bar
    from editguard.runinfo import edit_run_info
    from editguard.screen import run_screen, write_screen
    from editguard.suite_files import project_mined_suite_path, project_suites_dir, refuse_installed_path
    from editguard.suites import load_case_source

    if args.json:
        refuse_installed_path(args.json)  # before hours of edits, not after
    else:
        prove_writable("--json (not given: its default folder)", project_suites_dir() / "hardcf", directory=True)
    cases = load_case_source(args.cases, args.data, download=args.download)
    setup = open_setup(args, editor=True, baseline=True)
    mue, editor, thresholds, baseline = setup.mue, setup.editor, setup.thresholds, setup.baseline
    out = Path(args.json) if args.json else project_mined_suite_path(mue.name)
    refuse_installed_path(out)
    by_id = {c.case_id: c for c in cases}
    screen_path = Path(args.screen or default_output("screen", mue.name))
    if screen_path.exists():
        screen = json.loads(screen_path.read_text())
        if screen.get("fingerprint") != mue.fingerprint:
            raise DataError(f"--screen {screen_path} screens model {screen.get('model')!r} (fingerprint "
                            f"{screen.get('fingerprint')}), not {mue.name} ({mue.fingerprint}); "
                            "run `editguard screen` first")
    else:
        print(f"no screen at {screen_path}: screening {len(cases)} cases first")
        screen = run_screen(mue, cases, RomeHparams.for_family(mue.family.name), data_dir=args.data)
        write_screen(screen, screen_path)
    candidates = pick_candidates(screen["rows"], by_id, args.top, args.control, seed=args.seed)
    progress_path = Path(args.progress or default_output("mine", mue.name, editor.name, suffix=".jsonl"))
    risk = {row["case_id"]: row for row in screen["rows"]}
    console = Console()
    print(f"mining {len(candidates)} cases ({args.top} riskiest + {args.control} control) with {editor.name} on "
          f"{mue.name}; baseline ppl {baseline.ppl.ppl:.2f}; progress in {progress_path} (resumable)")
    with progress_bar(f"mine {mue.name} / {editor.name}", len(candidates)) as bar:
        def show(record):
            bar.advance(1)
            console.print(f"  {record['case_id']:>6} {record['group']:8} {record['subject'][:28]:28} "
                          f"ppl {record['ppl']:12.1f}  {record['degradation']}")
        records = mine(mue, editor, candidates, baseline, thresholds, progress_path, risk, on_case=show)
    run = edit_run_info(mue, editor, baseline, thresholds, seed=args.seed, suite=args.cases).to_json()
    run.pop("versions")
    run["screen"] = {k: v for k, v in screen.items() if k != "rows"}
    write_mined_suite(out, records, by_id, json.loads(json.dumps(run, default=str)))
    corr = risk_correlation(records)
    hard = sum(r["degradation"] == "collapsed" for r in records)
    print(f"{hard} of {len(records)} mined cases collapse the model (ppl > {thresholds.ppl_max:g}); "
          f"Spearman(risk, ppl) = {corr.get('spearman_risk_vs_ppl', float('nan')):.3f} over {corr['n']} cases; "
          f"wrote {out}")
    return 0


def cmd_filter(args) -> int:
    from editguard.cases import read_cases
    from editguard.mining import degradation, mine, record_filter
    from editguard.progress import progress_bar
    from editguard.runinfo import edit_run_info
    from editguard.suite_files import refuse_installed_path

    refuse_installed_path(args.case_file)  # the outcome is written into the case file
    prove_writable("case_file", args.case_file)
    cases = read_cases(args.case_file)
    setup = open_setup(args, editor=True, baseline=True)
    mue, editor, thresholds, baseline = setup.mue, setup.editor, setup.thresholds, setup.baseline
    progress_path = args.progress or default_output("filter", mue.name, editor.name, suffix=".jsonl")
    print(f"filtering {len(cases)} cases of {args.case_file} with {editor.name} on {mue.name} "
          f"(baseline ppl {baseline.ppl.ppl:.2f}); progress in {progress_path} (resumable)")
    run = edit_run_info(mue, editor, baseline, thresholds, suite=str(args.case_file)).to_json()
    for key in ("versions", "suites"):
        run.pop(key)
    run = json.loads(json.dumps(run, default=str))
    so_far: list[dict] = []
    with progress_bar(f"filter {args.case_file}", len(cases)) as bar:
        def show(record):
            bar.advance(1)
            print(f"  {record['case_id']:>8} {record['subject'][:20]:20} ppl {record['ppl']:12.1f}  "
                  f"{record['degradation']}")
            so_far.append(record)
            record_filter(args.case_file, so_far, run)  # an interrupted filter leaves its partial outcome
        records = mine(mue, editor, [(c, "all") for c in cases], baseline, thresholds, progress_path, on_case=show)
    record_filter(args.case_file, records, run)
    kept = sum(degradation(r["ppl"], baseline.ppl.ppl, thresholds) == "collapsed" for r in records)
    print(f"{kept} of {len(records)} cases collapse {mue.name} with one {editor.name} edit; "
          f"recorded under filters['{mue.name}/{editor.name}'] in {args.case_file}")
    return 0


def cmd_prepare(args) -> int:
    from pathlib import Path

    from editguard.prepare import PrepareOptions, prepare, render_results
    from editguard.prepared import merge_pieces
    from editguard.sharding import parse_shard

    if args.merge is not None:
        sources = [Path(p) for p in args.merge]
        if not sources:
            if args.model is None:
                raise DataError("--merge without folders merges the pieces in the model's own prepared folder: "
                                "name the --model, or the folders holding the shards' pieces")
            sources = [_prepared_folder_of(args)]
        for folder in merge_pieces(sources):
            print(f"merged the shards' pieces into {folder}; `editguard prepare --model ...` there finishes the "
                  f"steps without redoing a piece")
        return 0
    if args.model is None:
        raise DataError("--model is required (the model to prepare)")
    shard = parse_shard(args.shard) if args.shard else None
    options = PrepareOptions(editor=args.editor, cases=args.cases, screen_cases=args.screen_cases,
                             screen_chunk=args.screen_chunk, trace_facts=args.trace_facts, mine_top=args.mine_top,
                             mine_control=args.mine_control, calibrate_cases=args.calibrate_cases, seed=args.seed,
                             force=args.force, shard=shard, data_dir=args.data, download=args.download)
    mue = open_setup(args).mue
    print(f"preparing {mue.name} (fingerprint {mue.fingerprint}) for {args.editor}"
          + (f", shard {shard[0]}/{shard[1]}" if shard else ""), flush=True)

    def show(result) -> None:
        took = f" in {result.seconds:.1f} s" if result.status == "made" else ""
        print(f"  {result.step:<10} {result.status}{took}: {result.summary}", flush=True)

    mue, results = prepare(mue, options, on_step=show)
    from editguard.cli.common import console

    render_results(mue, results, console())
    return 0


def _prepared_folder_of(args):
    from editguard.suite_files import prepared_dir

    return prepared_dir(open_setup(args).mue.fingerprint)


def register(sub) -> None:
    p = sub.add_parser("screen", help="rank cases by ROME collapse risk from forward passes alone (no edits)")
    add_model_options(p)
    p.add_argument("--cases", default="counterfact", help="counterfact, counterfact-<split>, or a case file")
    add_options(p, "edit-layer", "download")
    p.add_argument("--templates", type=number_or("all"), default=str(DEFAULT_SCREEN_TEMPLATES),
                   help=f"context templates averaged into k̄: a number (default {DEFAULT_SCREEN_TEMPLATES}) "
                        "or 'all' (ROME's 21)")
    p.add_argument("--mom2-adjustment", action="store_true",
                   help="use C⁻¹k̄ as ROME's original paper (default: off, as the papers ran)")
    p.add_argument("--batch-size", type=POSITIVE, default=96)
    p.add_argument("--json", default=None, help="JSON path (a CSV is written beside it); default out/screen-MODEL.json")
    p.add_argument("--show", type=NON_NEGATIVE, default=10, help="print this many riskiest cases")
    p.set_defaults(run=cmd_screen, outputs={"json": False}, default_outputs={"json": DEFAULT_OUT})

    p = sub.add_parser("mine",
                       help="full edits of the riskiest screened cases (+ a random control); writes a suite file")
    add_model_options(p)
    add_options(p, "editor", "ppl-corpus", "ppl-bos", "ppl-threshold", "download",
                ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--cases", default="counterfact", help="counterfact, counterfact-<split>, or a case file")
    p.add_argument("--screen", default=None,
                   help="screen JSON from `editguard screen` (default out/screen-MODEL.json; run if absent)")
    p.add_argument("--top", type=NON_NEGATIVE, default=80, help="riskiest screened cases to edit")
    p.add_argument("--control", type=NON_NEGATIVE, default=30, help="randomly drawn other cases to edit (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", default=None, help="resumable JSONL log (default out/mine-MODEL-EDITOR.jsonl)")
    p.add_argument("--json", default=None,
                   help="suite file (default editguard-suites/hardcf/MODEL.json in the current directory, or under "
                        "$EDITGUARD_SUITES; the suites read it before the shipped list)")
    p.set_defaults(run=cmd_mine, outputs={"json": False, "progress": False},
                   default_outputs={"progress": DEFAULT_OUT, "screen": DEFAULT_OUT})

    p = sub.add_parser("calibrate",
                       help="calibrate the gate bounds on a model's normal CounterFact edits (used by the plugin)")
    add_model_options(p)
    add_options(p, "editor", "ppl-corpus", "ppl-bos", "download", ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--cases", type=POSITIVE, default=DEFAULT_CALIBRATION_CASES,
                   help=f"normal cases to edit (default {DEFAULT_CALIBRATION_CASES}, a seeded sample)")
    p.add_argument("--seed", type=int, default=DEFAULT_CALIBRATION_SEED,
                   help=f"sample seed (default {DEFAULT_CALIBRATION_SEED}; the normal suite's is 0)")
    p.add_argument("--json", default=None,
                   help="copy for the repository (default editguard-suites/calibration/MODEL-EDITOR.json in the "
                        "current directory, or under $EDITGUARD_SUITES); the cache keeps one per fingerprint")
    p.set_defaults(run=cmd_calibrate, outputs={"json": False})

    p = sub.add_parser("prepare",
                       help="everything a model needs before its suites: edit layer (causal trace), statistics, "
                            "screen, mined list, calibration; cached by fingerprint, resumable, shardable")
    add_options(p, "device", "dtype", "data", "trust-remote-code")
    p.add_argument("--model", default=None, help="model name, local directory or Hugging Face hub id")
    add_options(p, "editor", "download")
    p.add_argument("--cases", default="counterfact", help="the screen's cases: counterfact, counterfact-<split>, "
                                                          "or a case file")
    p.add_argument("--screen-cases", type=POSITIVE, default=None,
                   help="screen the first N cases of --cases (default: all)")
    p.add_argument("--screen-chunk", type=POSITIVE, default=1000,
                   help="cases per resumable, shardable piece of the screen (default 1000)")
    p.add_argument("--trace-facts", type=POSITIVE, default=20,
                   help="known facts the causal trace averages over (default 20)")
    p.add_argument("--mine-top", type=NON_NEGATIVE, default=70, help="riskiest screened cases to edit (default 70)")
    p.add_argument("--mine-control", type=NON_NEGATIVE, default=30,
                   help="randomly drawn other cases to edit (default 30)")
    p.add_argument("--calibrate-cases", type=POSITIVE, default=DEFAULT_CALIBRATION_CASES,
                   help=f"normal cases the gate bounds are calibrated on (default {DEFAULT_CALIBRATION_CASES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the control sample and the trace's noise")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="do part I of N of the screen, then (once the screen is whole) of the mining")
    p.add_argument("--merge", nargs="*", default=None, metavar="DIR",
                   help="gather the shards' pieces from these folders (default: the model's prepared folder) and "
                        "combine them; no model work")
    p.add_argument("--force", action="store_true", help="make every step again, shipped ones too")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("filter",
                       help="edit every case of a case file and record which collapse the model (HardEdit's filter)")
    add_model_options(p)
    p.add_argument("case_file")
    add_options(p, "editor", "ppl-corpus", "ppl-bos", "ppl-threshold", ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--progress", default=None, help="resumable JSONL log (default out/filter-MODEL-EDITOR.jsonl)")
    p.set_defaults(run=cmd_filter, outputs={"progress": False}, default_outputs={"progress": DEFAULT_OUT})
