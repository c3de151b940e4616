"""The `editguard` command: measurements outside pytest.

    editguard ppl --model smollm2-135m --ppl-corpus me-ppl-1k
    editguard stats --model smollm2-135m --edit-layer 5 --tokens 100000
    editguard screen --model smollm2-135m --cases counterfact
    editguard mine --model smollm2-135m --editor rome --top 80 --control 30
    editguard report out.json
    editguard filter suites/hardedit/cases.json --model smollm2-135m --editor rome
    editguard plot rome.json c-rome.json suites/hardcf/smollm2-135m.json --plots out/plots
    editguard merge shard1.json shard2.json --json all.json
    editguard compare saved.json current.json --compare-fail ppl:10%
    editguard analyze positions --model smollm2-135m --editor rome --max-cases 10
    editguard analyze prefix --model smollm2-135m --editor c-rome --max-cases 10
    editguard train-mend --model smollm2-135m --steps 300

Options shared with the pytest plugin (model, editor, data, ppl-corpus, ...) come from
editguard.options, under the same names (the plugin's `--editguard-data` is `--data` here).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

from editguard.cache import output_path_problem
from editguard.catalog import registered_names
from editguard.models.registry import ppl_bos_for
from editguard.options import (
    DEFAULT_CALIBRATION_CASES,
    DEFAULT_CALIBRATION_SEED,
    SINGLE_EDIT_PPL_CORPUS,
    add_cli_options,
    checked_type,
    data_dir,
)

# The screen's default, without importing torch for `editguard --help`.
DEFAULT_SCREEN_TEMPLATES = 11
POSITIVE = checked_type(int, minimum=1)
NON_NEGATIVE = checked_type(int, minimum=0)


def _number_or(word: str):
    """An argparse `type=`: `word` (e.g. 'all', 'full') or an integer ≥ 1."""
    def parse(raw: str):
        if raw == word:
            return raw
        try:
            return POSITIVE(raw)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ 1 or '{word}', got {raw!r}") from None
    return parse


@functools.cache
def _registered() -> dict[str, str]:
    return registered_names()


def _add_options(parser: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    """The option table's options, with the registered editor/model/task names in their help."""
    add_cli_options(parser, *names, registered=_registered(), **kwargs)


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("editguard")
    except md.PackageNotFoundError:
        return "unknown (not installed)"


def _common(parser: argparse.ArgumentParser) -> None:
    _add_options(parser, "model", "device", "dtype", "data")


def cmd_ppl(args) -> int:
    from editguard.data import load_ppl_corpus
    from editguard.metrics.perplexity import perplexity
    from editguard.models import load_model
    from editguard.progress import progress_bar

    mue = load_model(args.model, args.device, args.dtype)
    sentences = load_ppl_corpus(args.ppl_corpus, args.data, download=args.download)
    with progress_bar(f"perplexity {args.model} on {args.ppl_corpus}", len(sentences)) as bar:
        result = perplexity(mue, sentences, bos=args.ppl_bos, progress=bar.advance)
    print(f"{args.model} {args.ppl_corpus} ({len(sentences)} sentences, {result.n_tokens} scored tokens, "
          f"BOS {args.ppl_bos}): "
          f"ppl {result.ppl:.2f} (mean per sentence), corpus ppl {result.corpus_ppl:.2f} (token-weighted)")
    return 0


def cmd_stats(args) -> int:
    from editguard.data import load_text_corpus
    from editguard.editors.covariance import second_moment
    from editguard.models import load_model

    mue = load_model(args.model, args.device, args.dtype)
    layer = args.edit_layer if args.edit_layer is not None else mue.edit_layer
    mom2 = second_moment(mue, layer, load_text_corpus(args.corpus, args.data, download=args.download),
                         n_tokens=args.tokens)
    print(f"{args.model} layer {layer}: E[kkᵀ] {tuple(mom2.shape)} from {args.corpus}, trace {float(mom2.trace()):.4g} "
          f"(cached under {os.path.join('$EDITGUARD_CACHE', 'stats')})")
    return 0


def cmd_screen(args) -> int:
    from editguard.editors.rome import RomeHparams
    from editguard.models import load_model
    from editguard.screen import run_screen, write_screen
    from editguard.suites import load_case_source

    mue = load_model(args.model, args.device, args.dtype)
    overrides = {"mom2_adjustment": args.mom2_adjustment}
    if args.edit_layer is not None:
        overrides["layer"] = args.edit_layer
    hparams = RomeHparams.for_family(mue.family.name, overrides)
    cases = load_case_source(args.cases, args.data, download=args.download)
    n_templates = None if args.templates == "all" else int(args.templates)
    doc = run_screen(mue, cases, hparams, n_templates, data_dir=args.data, batch_size=args.batch_size)
    out = args.json or f"out/screen-{mue.name}.json"
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
    from editguard.data import load_ppl_corpus
    from editguard.editors.registry import get_editor
    from editguard.guard import measure_baseline
    from editguard.models import load_model
    from editguard.suite_files import find_mined_suite, project_suites_dir, refuse_installed_path
    from editguard.suites import normal_sample

    out = Path(args.json) if args.json else project_suites_dir() / "calibration" / shipped_name(args.model, args.editor)
    refuse_installed_path(out)
    mue = load_model(args.model, args.device, args.dtype)
    editor = get_editor(args.editor, data_dir=args.data)
    cases = normal_sample(args.cases, args.data, download=args.download, seed=args.seed)
    baseline = measure_baseline(mue, load_ppl_corpus(args.ppl_corpus, args.data, download=args.download),
                                args.ppl_corpus, bos=args.ppl_bos)
    mined_path = find_mined_suite(mue.name)
    mined = json.loads(mined_path.read_text()) if mined_path is not None else None
    print(f"calibrating {args.editor} gates on {len(cases)} normal CounterFact cases of {mue.name} "
          f"(fingerprint {mue.fingerprint}, baseline {args.ppl_corpus} {baseline.ppl.ppl:.2f}, BOS {args.ppl_bos})",
          flush=True)

    def show(row) -> None:
        shown = {k: float("nan") if row[k] is None else row[k]
                 for k in ("ppl_ratio", "update_norm_rel", "denominator_ratio", "blast_radius")}
        print(f"{row['case_id']:>6} {row['text'][:48]:<48} ppl×{shown['ppl_ratio']:.3f} "
              f"‖ΔW‖/‖W‖ {shown['update_norm_rel']:.3f} ratio {shown['denominator_ratio']:.3f} "
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
    import json
    from pathlib import Path

    from rich.console import Console

    from editguard.data import load_ppl_corpus
    from editguard.editors.registry import get_editor
    from editguard.editors.rome import RomeHparams
    from editguard.gates import Thresholds
    from editguard.guard import measure_baseline
    from editguard.mining import mine, pick_candidates, risk_correlation, write_mined_suite
    from editguard.models import load_model
    from editguard.progress import progress_bar
    from editguard.runinfo import edit_run_info
    from editguard.screen import run_screen, write_screen
    from editguard.suite_files import project_mined_suite_path, refuse_installed_path
    from editguard.suites import load_case_source

    mue = load_model(args.model, args.device, args.dtype)
    out = Path(args.json) if args.json else project_mined_suite_path(mue.name)
    refuse_installed_path(out)  # before hours of edits, not after
    cases = load_case_source(args.cases, args.data, download=args.download)
    by_id = {c.case_id: c for c in cases}
    screen_path = Path(args.screen or f"out/screen-{mue.name}.json")
    if screen_path.exists():
        screen = json.loads(screen_path.read_text())
        if screen.get("fingerprint") != mue.fingerprint:
            raise ValueError(f"{screen_path} screens model {screen.get('model')!r} (fingerprint "
                             f"{screen.get('fingerprint')}), not {mue.name} ({mue.fingerprint}); "
                             "run `editguard screen` first")
    else:
        print(f"no screen at {screen_path}: screening {len(cases)} cases first")
        screen = run_screen(mue, cases, RomeHparams.for_family(mue.family.name), data_dir=args.data)
        write_screen(screen, screen_path)
    candidates = pick_candidates(screen["rows"], by_id, args.top, args.control, seed=args.seed)
    editor = get_editor(args.editor, data_dir=args.data)
    thresholds = Thresholds(ppl_max=args.ppl_threshold)
    sentences = load_ppl_corpus(args.ppl_corpus, args.data, download=args.download)
    baseline = measure_baseline(mue, sentences, args.ppl_corpus, bos=args.ppl_bos)
    progress_path = Path(args.progress or f"out/mine-{mue.name}-{editor.name}.jsonl")
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


def cmd_plot(args) -> int:
    import json
    from pathlib import Path

    from editguard.report.plots import plot_risk_vs_ppl, write_report_plots

    reports, written = [], []
    for name in args.files:
        doc = json.loads(Path(name).read_text())
        if isinstance(doc, dict) and "measurements" in doc:  # a mined suite file
            stem = Path(name).stem
            written.append(plot_risk_vs_ppl(doc["measurements"], Path(args.plots) / f"risk-vs-ppl-{stem}.png",
                                            doc["run"]["thresholds"]["ppl_max"]))
            reports.append({"run": {**doc["run"], "suite": f"mined-{stem}"}, "cases": doc["measurements"]})
        elif isinstance(doc, dict) and "run" in doc and "cases" in doc:
            reports.append(doc)
        else:
            raise ValueError(f"{name}: neither an editguard JSON report nor a mined suite file")
    written += write_report_plots(reports, args.plots)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_filter(args) -> int:
    from editguard.cases import read_cases
    from editguard.data import load_ppl_corpus
    from editguard.editors.registry import get_editor
    from editguard.gates import Thresholds
    from editguard.guard import measure_baseline
    from editguard.mining import degradation, mine, record_filter
    from editguard.models import load_model
    from editguard.progress import progress_bar
    from editguard.runinfo import edit_run_info
    from editguard.suite_files import refuse_installed_path

    refuse_installed_path(args.case_file)  # the outcome is written into the case file
    mue = load_model(args.model, args.device, args.dtype)
    cases = read_cases(args.case_file)
    editor = get_editor(args.editor, data_dir=args.data)
    thresholds = Thresholds(ppl_max=args.ppl_threshold)
    baseline = measure_baseline(mue, load_ppl_corpus(args.ppl_corpus, args.data), args.ppl_corpus, bos=args.ppl_bos)
    progress_path = args.progress or f"out/filter-{mue.name}-{editor.name}.jsonl"
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


def cmd_report(args) -> int:
    from rich.console import Console

    from editguard.report import load_report, render_report

    doc = load_report(args.json)
    console = Console() if sys.stdout.isatty() else Console(width=160)  # piped: no 80-column squeeze
    console.print(render_report(doc["run"], doc["cases"], max_rows=args.max_rows))
    if args.plots:
        from editguard.report.plots import write_report_plots

        for path in write_report_plots([doc], args.plots):
            print(f"wrote {path}")
    return 1 if any(not c["passed"] for c in doc["cases"]) else 0


def cmd_merge(args) -> int:
    from editguard.report import load_report, write_report
    from editguard.report.merge import merge_reports

    merged = merge_reports([(name, load_report(name)) for name in args.files])
    write_report(args.json, merged["run"], merged["cases"])
    failed = sum(not c["passed"] for c in merged["cases"])
    print(f"merged {len(args.files)} reports, {len(merged['cases'])} cases ({failed} failed) into {args.json}")
    return 0


def cmd_compare(args) -> int:
    """SAVED CURRENT: the no-regression gate (the plugin's --editguard-compare), exit 1 on a
    regression or a worsening beyond a --compare-fail margin; with --equal, the equality check."""
    from editguard.report import load_report
    from editguard.report.compare import compare_reports, compare_runs, parse_fail_margins

    if not args.equal:
        if args.rtol is not None:
            raise ValueError("--rtol is the tolerance of --equal; the gate's margins are --compare-fail FIELD:N%")
        margins = parse_fail_margins(args.compare_fail)
        comparison = compare_runs(load_report(args.first), load_report(args.second), margins, name=args.first)
        for line in comparison.lines(max_listed=args.max_lines):
            print(line)
        if args.markdown:
            from pathlib import Path

            from editguard.report.markdown import render_markdown

            current = load_report(args.second)
            Path(args.markdown).write_text(render_markdown(current["run"], current["cases"], comparison),
                                           encoding="utf-8")
        return 1 if comparison.failed else 0
    if args.compare_fail:
        raise ValueError("--compare-fail judges worsenings; --equal checks equality within --rtol: give one")
    args.rtol = 1e-4 if args.rtol is None else args.rtol
    problems = compare_reports(load_report(args.first), load_report(args.second), rtol=args.rtol)
    for line in problems[: args.max_lines]:
        print(line)
    if len(problems) > args.max_lines:
        print(f"... and {len(problems) - args.max_lines} more differences")
    n = len(load_report(args.first)["cases"])
    print(f"{args.first} and {args.second}: " + (f"{len(problems)} differences" if problems else
          f"the same {n} cases, verdicts and numbers (rtol {args.rtol:g}; timings ignored)"))
    return 1 if problems else 0


def _analysis_cases(spec: str, model: str, data, n: int):
    from editguard.cases import read_cases
    from editguard.suites import hardcf, normal_sample

    if spec == "hardcf":
        cases = hardcf(model, data, load=lambda: _load(model))
    elif spec == "normal":
        cases = normal_sample(n, data)
    else:
        cases = read_cases(spec)
    return list(cases)[:n]


def _load(model: str, device: str = "auto", dtype: str = "float32"):
    from editguard.models import load_model

    return load_model(model, device, dtype)


def _print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in ("condition", "group", "test") else "right")
    for row in rows:
        table.add_row(*[("–" if row[c] is None else f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]))
                        for c in columns])
    (Console() if sys.stdout.isatty() else Console(width=160)).print(table)


def cmd_analyze(args) -> int:
    from pathlib import Path

    from editguard.analysis import analyze_positions, analyze_prefix_cure, summarize_positions, summarize_prefix_cure
    from editguard.data import load_ppl_corpus
    from editguard.editors.api import editor_hparams
    from editguard.editors.registry import get_editor
    from editguard.gates import Thresholds
    from editguard.guard import measure_baseline
    from editguard.progress import progress_bar
    from editguard.runinfo import model_fields

    mue = _load(args.model, args.device, args.dtype)
    editor = get_editor(args.editor, data_dir=args.data)
    thresholds = Thresholds(ppl_max=args.ppl_threshold)
    baseline = measure_baseline(mue, load_ppl_corpus(args.ppl_corpus, args.data), args.ppl_corpus, shared=True,
                                bos=args.ppl_bos)
    header = {**model_fields(mue), "editor": editor.name, "hparams": editor_hparams(editor, mue),
              "ppl_corpus": args.ppl_corpus, "ppl_bos": args.ppl_bos, "baseline_ppl": baseline.ppl.ppl,
              "thresholds": thresholds.to_dict()}
    if args.what == "positions":
        subject_first = [c for c in _analysis_cases(args.cases, mue.name, args.data, 10**9) if c.subject_first]
        cases = subject_first[: args.max_cases]
        with progress_bar(f"positions: {len(cases)} cases × 3 edits", 3 * len(cases)) as bar:
            rows = analyze_positions(mue, editor, cases, baseline, thresholds, on_row=lambda r: bar.advance(1))
        summary = summarize_positions(rows, thresholds.ppl_max)
        _print_table(f"{editor.name} on {mue.name}: subject position "
                     f"(baseline {args.ppl_corpus} {baseline.ppl.ppl:.1f})",
                     summary, ["condition", "n", "key_cosine_median", "denominator_ratio_median", "ppl_median",
                               "ppl_max", "collapsed"])
    else:
        groups = {"hard": _analysis_cases(args.cases, mue.name, args.data, args.max_cases),
                  "normal": _analysis_cases("normal", mue.name, args.data, args.max_cases)}
        n = sum(len(g) for g in groups.values())
        with progress_bar(f"prefix cure: {n} edits", n) as bar:
            rows = analyze_prefix_cure(mue, editor, groups, baseline, thresholds, on_row=lambda r: bar.advance(1))
        summary = summarize_prefix_cure(rows)
        _print_table(f"{editor.name} on {mue.name}: scores without and with the test-time prefix", summary,
                     ["group", "test", "n", "efficacy", "generalization", "locality"])
    out = Path(args.json or f"out/analyze-{args.what}-{mue.name}-{editor.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": header, "summary": summary, "rows": rows}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


def cmd_train_mend(args) -> int:
    import torch

    from editguard.editors.hparams import load_hparams_file
    from editguard.editors.mend.hparams import edited_matrices, resolve_hparams
    from editguard.editors.mend.store import train_and_cache
    from editguard.mend_data import locality_sentences, training_cases
    from editguard.models import load_model
    from editguard.progress import progress_bar

    if args.threads:
        torch.set_num_threads(args.threads)
    mue = load_model(args.model, args.device, args.dtype)
    hp = resolve_hparams(mue, load_hparams_file(args.hparams) if args.hparams else {})
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


def cmd_eval(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from editguard.evaluation import apply_edits, render_table, run_header, score_row, score_tasks
    from editguard.tasks import parse_task_list

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tasks = parse_task_list(args.tasks)
    n = None if args.n == "full" else int(args.n)
    mue = _load(args.model, args.device, args.dtype)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    header, restore, steps = run_header(mue, tasks, n, args.seed, args.downstream_precision), None, []
    if args.editor:
        from editguard.data import load_ppl_corpus
        from editguard.editors.api import editor_hparams
        from editguard.editors.registry import get_editor
        from editguard.guard import measure_baseline

        editor = get_editor(args.editor, data_dir=args.data)
        cases = _analysis_cases(args.cases, mue.name, args.data, args.max_cases)
        baseline = measure_baseline(mue, load_ppl_corpus(args.ppl_corpus, args.data), args.ppl_corpus, shared=True,
                                    bos=args.ppl_bos)
        mode = "sequentially" if args.sequential else "in one batch"
        print(f"applying {len(cases)} {editor.name} edits {mode} ({args.cases}); baseline {args.ppl_corpus} "
              f"{baseline.ppl.ppl:.1f}")
        restore, steps = apply_edits(mue, editor, cases, baseline, args.sequential)
        for step in steps:
            if "ppl" in step:
                print(f"  step {step['step']:2d} {step['case_id']:>6} {step['subject'][:24]:24} ppl {step['ppl']:.4g}")
        header.update(editor=editor.name, hparams=editor_hparams(editor, mue),
                      cases=[c.case_id for c in cases], case_source=args.cases, sequential=args.sequential,
                      ppl_corpus=args.ppl_corpus, ppl_bos=args.ppl_bos, baseline_ppl=baseline.ppl.ppl)
    try:
        scores = score_tasks(mue, tasks, n, args.data, args.seed, precision=args.downstream_precision,
                             on_task=lambda s: print(f"  {s.task}: {s.metric} {s.accuracy:.4f} "
                                                     f"(n={s.n}, {s.seconds:.0f} s)"))
    finally:
        if restore is not None:
            restore()
            print("weights restored and verified bit for bit against the unedited model")
    state = f"after {len(header['cases'])} {header['editor']} edits" if args.editor else "unedited"
    console.print(render_table(f"{mue.name} {state}: downstream tasks (n={header['n']}, seed {args.seed})", scores))
    out = Path(args.json or f"out/eval-{mue.name}{'-' + args.editor if args.editor else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": header, "edits": steps, "tasks": {k: score_row(v) for k, v in scores.items()}},
                              indent=1, default=str))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="editguard", description="Safety measurements for LLM knowledge edits.")
    parser.add_argument("--version", action="version", version=f"editguard {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ppl", help="ME-PPL perplexity of an unedited model")
    _common(p)
    _add_options(p, "ppl-corpus", "ppl-bos", "download", ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.set_defaults(run=cmd_ppl)

    p = sub.add_parser("stats", help="compute and cache the MLP key covariance of a layer")
    _common(p)
    _add_options(p, "edit-layer", "download")
    p.add_argument("--corpus", default="wikitext-2-raw", help="text corpus the keys are taken from")
    p.add_argument("--tokens", type=POSITIVE, default=100_000, help="tokens the covariance is estimated from")
    p.set_defaults(run=cmd_stats)

    p = sub.add_parser("screen", help="rank cases by ROME collapse risk from forward passes alone (no edits)")
    _common(p)
    p.add_argument("--cases", default="counterfact", help="counterfact, counterfact-<split>, or a case file")
    _add_options(p, "edit-layer", "download")
    p.add_argument("--templates", type=_number_or("all"), default=str(DEFAULT_SCREEN_TEMPLATES),
                   help=f"context templates averaged into k̄: a number (default {DEFAULT_SCREEN_TEMPLATES}) "
                        "or 'all' (ROME's 21)")
    p.add_argument("--mom2-adjustment", action="store_true",
                   help="use C⁻¹k̄ as ROME's original paper (default: off, as the papers ran)")
    p.add_argument("--batch-size", type=POSITIVE, default=96)
    p.add_argument("--json", default=None, help="JSON path (a CSV is written beside it); default out/screen-MODEL.json")
    p.add_argument("--show", type=NON_NEGATIVE, default=10, help="print this many riskiest cases")
    p.set_defaults(run=cmd_screen)

    p = sub.add_parser("mine",
                       help="full edits of the riskiest screened cases (+ a random control); writes a suite file")
    _common(p)
    _add_options(p, "editor", "ppl-corpus", "ppl-bos", "ppl-threshold", "download",
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
    p.set_defaults(run=cmd_mine)

    p = sub.add_parser("calibrate",
                       help="calibrate the gate bounds on a model's normal CounterFact edits (used by the plugin)")
    _common(p)
    _add_options(p, "editor", "ppl-corpus", "ppl-bos", "download", ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--cases", type=POSITIVE, default=DEFAULT_CALIBRATION_CASES,
                   help=f"normal cases to edit (default {DEFAULT_CALIBRATION_CASES}, a seeded sample)")
    p.add_argument("--seed", type=int, default=DEFAULT_CALIBRATION_SEED,
                   help=f"sample seed (default {DEFAULT_CALIBRATION_SEED}; the normal suite's is 0)")
    p.add_argument("--json", default=None,
                   help="copy for the repository (default editguard-suites/calibration/MODEL-EDITOR.json in the "
                        "current directory, or under $EDITGUARD_SUITES); the cache keeps one per fingerprint")
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("filter",
                       help="edit every case of a case file and record which collapse the model (HardEdit's filter)")
    _common(p)
    p.add_argument("case_file")
    _add_options(p, "editor", "ppl-corpus", "ppl-bos", "ppl-threshold", ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--progress", default=None, help="resumable JSONL log (default out/filter-MODEL-EDITOR.jsonl)")
    p.set_defaults(run=cmd_filter)

    p = sub.add_parser("plot", help="PNG plots from JSON reports and mined suite files")
    p.add_argument("files", nargs="+", help="JSON reports (--editguard-json) and/or mined suite files")
    _add_options(p, "plots", plots="out/plots")
    p.set_defaults(run=cmd_plot)

    p = sub.add_parser("report", help="render the collapse report (and optionally the plots) of a JSON report")
    p.add_argument("json")
    p.add_argument("--max-rows", type=POSITIVE, default=50)
    _add_options(p, "plots")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("merge", help="merge the JSON reports of shards (--editguard-shard i/n) into one")
    p.add_argument("files", nargs="+", help="shard reports written with --editguard-json")
    p.add_argument("--json", "-o", "--out", required=True, help="write the merged JSON report to this path")
    p.set_defaults(run=cmd_merge)

    p = sub.add_parser("compare", help="the no-regression gate: judge a JSON report case by case against a saved "
                                       "one (exit 1 on a regression); --equal: check that they are the same")
    p.add_argument("first", metavar="SAVED", help="the saved report (the baseline)")
    p.add_argument("second", metavar="CURRENT", help="the report to judge")
    _add_options(p, "compare-fail", "markdown")
    p.add_argument("--equal", action="store_true",
                   help="instead: check that the two reports hold the same cases, verdicts and numbers (timings "
                        "ignored); exit 1 on any difference")
    p.add_argument("--rtol", type=checked_type(float, minimum=0), default=None,
                   help="with --equal: relative tolerance for numbers (default 1e-4)")
    p.add_argument("--max-lines", type=NON_NEGATIVE, default=30)
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("analyze", help="the Fall of ROME analyses: subject position, test-time prefix cure")
    _common(p)
    p.add_argument("what", choices=["positions", "prefix"],
                   help="positions: subject first vs moved later vs first position swapped (ROME edits); "
                        "prefix: efficacy/generalization/locality with and without the test-time prefix")
    p.add_argument("--cases", default="hardcf", help="hardcf (the model's mined list) or a case file")
    _add_options(p, "editor", editor=None, shown_defaults={"editor": "rome for positions, c-rome for prefix"})
    _add_options(p, "max-cases", "ppl-corpus", "ppl-bos", "ppl-threshold", max_cases=10,
                 ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--json", default=None, help="default out/analyze-WHAT-MODEL-EDITOR.json")
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("train-mend",
                       help="train MEND's editor network for a model and cache it (needed by --editor=mend)")
    _common(p)
    p.add_argument("--steps", type=POSITIVE, default=300, help="training steps (default 300)")
    p.add_argument("--cases", default="counterfact",
                   help="counterfact (its train split, without the cases the suites edit) or a case file")
    _add_options(p, "hparams")
    p.add_argument("--threads", type=NON_NEGATIVE, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine 2 threads run ~10x slower); "
                        "0 keeps torch's")
    p.add_argument("--no-ppl-locality", action="store_true",
                   help="locality text from the cases' neighbourhood prompts only")
    p.add_argument("--retrain", action="store_true", help="train even if this exact editor is cached")
    p.set_defaults(run=cmd_train_mend)

    p = sub.add_parser("eval", help="score a model (unedited, or after an editor's edits) on downstream tasks")
    _common(p)
    p.add_argument("--tasks", default="piqa,hellaswag,lambada,mmlu,nq-open",
                   help="comma-separated: piqa, hellaswag, lambada, mmlu, mmlu-5shot, nq-open, squad2")
    p.add_argument("--n", type=_number_or("full"), default="full",
                   help="items per task: a number (seeded subset) or 'full' (default)")
    p.add_argument("--seed", type=int, default=0)
    _add_options(p, "editor", editor=None,
                    shown_defaults={"editor": "none: the unedited model; with one, its edits are applied before "
                                              "scoring and the weights restored after"})
    p.add_argument("--cases", default="hardcf", help="with --editor: hardcf, normal or a case file")
    _add_options(p, "max-cases", "ppl-corpus", "ppl-bos", "downstream-precision", max_cases=10,
                    ppl_corpus=SINGLE_EDIT_PPL_CORPUS)
    p.add_argument("--sequential", action="store_true", help="apply the edits one after another (else one batch)")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="JSON path (default out/eval-MODEL[-EDITOR].json)")
    p.set_defaults(run=cmd_eval)

    args = parser.parse_args(argv)
    # Output paths are checked before the work, not after it: a long mine/eval run must not be lost.
    for dest, directory in (("json", False), ("plots", True), ("markdown", False)):
        problem = output_path_problem(f"--{dest}", getattr(args, dest, None), directory=directory)
        if problem:
            print(f"editguard {args.command}: {problem}", file=sys.stderr)
            return 2
    if "data" in vars(args):
        args.data = data_dir(args.data)
    if "ppl_bos" in vars(args):
        args.ppl_bos = ppl_bos_for(args.model, args.ppl_bos)
    if args.command == "analyze" and args.editor is None:
        args.editor = "rome" if args.what == "positions" else "c-rome"
    try:
        return args.run(args)
    except (ValueError, LookupError, OSError) as err:
        print(f"editguard {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
