"""Reading JSON reports: `editguard report`, `merge`, `compare`, `plot`."""

from __future__ import annotations

import json

from editguard.cli.common import NON_NEGATIVE, POSITIVE, add_options, console
from editguard.errors import EXIT_FAILED, EXIT_OK, ReportError, UsageError
from editguard.options import checked_type


def cmd_report(args) -> int:
    """Render a report (exit 1 when a case failed or errored, or the run is incomplete); with
    --recover, first rebuild it from the journal of a run that never finished."""
    from editguard.report import load_report, render_report

    path = args.json
    if args.recover:
        from editguard.run.recorder import recover_report

        path = recover_report(args.json, args.out)
        print(f"recovered {path} from the journal {args.json}")
    elif args.out:
        raise UsageError("--out is where --recover writes the recovered report; give --recover")
    doc = load_report(path)
    console().print(render_report(doc["run"], doc["cases"], max_rows=args.max_rows))
    if args.plots:
        from editguard.report.plots import write_report_plots

        for written in write_report_plots([doc], args.plots):
            print(f"wrote {written}")
    if args.html:
        from editguard.report.html import saved_comparison, write_html

        print(f"wrote {write_html(args.html, doc['run'], doc['cases'], saved_comparison(doc), doc)}")
    if doc.get("complete") is False:
        not_run = len(doc.get("cases_not_run") or [])
        print(f"editguard: INCOMPLETE run: {len(doc['cases'])} cases reported"
              + (f", {not_run} collected edit tests did not run" if not_run else "")
              + (f" (recovered from {doc['recovered_from']})" if doc.get("recovered_from") else ""))
        return EXIT_FAILED
    return EXIT_FAILED if any(not c["passed"] for c in doc["cases"]) else EXIT_OK


def cmd_merge(args) -> int:
    from pathlib import Path

    from editguard.prepared import is_piece_folder, merge_pieces
    from editguard.report import load_report, write_report
    from editguard.report.merge import merge_reports

    folders = [name for name in args.files if Path(name).is_dir()]
    if folders:   # the pieces of `editguard prepare --shard i/n` runs
        if len(folders) != len(args.files) or not all(is_piece_folder(Path(f)) for f in folders):
            raise UsageError("editguard merge takes JSON reports, or folders holding pieces of "
                             "`editguard prepare --shard` runs (screen-chunks/, shards/), not a mix")
        for folder in merge_pieces([Path(f) for f in folders]):
            print(f"merged the shards' pieces into {folder}; `editguard prepare --model ...` finishes the steps")
        return EXIT_OK
    if not args.json:
        raise UsageError("editguard merge: --json is required to merge JSON reports")
    merged = merge_reports([(name, load_report(name)) for name in args.files])
    # An incomplete shard makes the merged run incomplete; stopped sequences stay recorded.
    write_report(args.json, merged["run"], merged["cases"],
                 {k: merged[k] for k in ("complete", "sequences_stopped") if k in merged})
    failed = sum(not c["passed"] for c in merged["cases"])
    print(f"merged {len(args.files)} reports, {len(merged['cases'])} cases ({failed} failed) into {args.json}")
    return EXIT_OK


def cmd_compare(args) -> int:
    """SAVED CURRENT: the no-regression gate (the plugin's --editguard-compare), exit 1 on a
    regression or a worsening beyond a --compare-fail margin; with --equal, the equality check."""
    from editguard.report import load_report
    from editguard.report.compare import check_usable, compare_reports, compare_runs, parse_fail_margins

    if not args.equal:
        if args.rtol is not None:
            raise UsageError("--rtol is the tolerance of --equal; the gate's margins are --compare-fail FIELD:N%")
        margins = parse_fail_margins(args.compare_fail)
        saved, current = load_report(args.first), load_report(args.second)
        check_usable(current, args.second)   # an incomplete or duplicated current run is refused too
        comparison = compare_runs(saved, current, margins, name=args.first)
        for line in comparison.lines(max_listed=args.max_lines):
            print(line)
        if args.markdown:
            from editguard.cache import write_atomic
            from editguard.report.markdown import render_markdown

            current = load_report(args.second)
            write_atomic(args.markdown, render_markdown(current["run"], current["cases"], comparison).encode("utf-8"))
        return EXIT_FAILED if comparison.failed else EXIT_OK
    if args.compare_fail:
        raise UsageError("--compare-fail judges worsenings; --equal checks equality within --rtol: give one")
    args.rtol = 1e-4 if args.rtol is None else args.rtol
    problems = compare_reports(load_report(args.first), load_report(args.second), rtol=args.rtol)
    for line in problems[: args.max_lines]:
        print(line)
    if len(problems) > args.max_lines:
        print(f"... and {len(problems) - args.max_lines} more differences")
    n = len(load_report(args.first)["cases"])
    print(f"{args.first} and {args.second}: " + (f"{len(problems)} differences" if problems else
          f"the same {n} cases, verdicts and numbers (rtol {args.rtol:g}; timings ignored)"))
    return EXIT_FAILED if problems else EXIT_OK


def _plot_input(name: str) -> dict:
    """A JSON report (checked by load_report) or a mined suite file (its measurements checked);
    ReportError naming the file and what is wrong otherwise."""
    from pathlib import Path

    from editguard.report import load_report
    from editguard.run.records import check_thresholds

    try:
        doc = json.loads(Path(name).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{name}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{name}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if isinstance(doc, dict) and "measurements" in doc:  # a mined suite file
        run, rows = doc.get("run"), doc["measurements"]
        if not isinstance(run, dict) or not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ReportError(f"{name}: a mined suite file needs 'run' (an object) and 'measurements' (a list of "
                              f"objects)")
        check_thresholds(run, name)
        for index, row in enumerate(rows):
            ppl = row.get("ppl")
            if ppl is not None and (isinstance(ppl, bool) or not isinstance(ppl, (int, float))):
                raise ReportError(f"{name}: measurements[{index}].ppl is {ppl!r:.60}; expected a number or null")
        return doc
    if isinstance(doc, dict) and "run" in doc and "cases" in doc:
        return load_report(name)
    raise ReportError(f"{name}: not an editguard JSON report (expected keys 'run' and 'cases'), nor a mined suite "
                      f"file (keys 'run' and 'measurements')")


def cmd_plot(args) -> int:
    from pathlib import Path

    from editguard.report.plots import plot_risk_vs_ppl, write_report_plots

    reports, written = [], []
    for name in args.files:
        doc = _plot_input(name)
        if "measurements" in doc:  # a mined suite file
            stem = Path(name).stem
            written.append(plot_risk_vs_ppl(doc["measurements"], Path(args.plots) / f"risk-vs-ppl-{stem}.png",
                                            doc["run"]["thresholds"]["ppl_max"]))
            reports.append({"run": {**doc["run"], "suite": f"mined-{stem}"}, "cases": doc["measurements"]})
        else:
            reports.append(doc)
    written += write_report_plots(reports, args.plots)
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("plot", help="PNG plots from JSON reports and mined suite files")
    p.add_argument("files", nargs="+", help="JSON reports (--editguard-json) and/or mined suite files")
    add_options(p, "plots", plots="out/plots")
    p.set_defaults(run=cmd_plot, outputs={"plots": True})

    p = sub.add_parser("report", help="render the collapse report (and optionally the plots) of a JSON report; "
                                      "exit 1 when a case failed")
    p.add_argument("json", help="a JSON report (--editguard-json), or with --recover its journal "
                                "(REPORT.journal.jsonl)")
    p.add_argument("--recover", action="store_true",
                   help="rebuild the report from the journal of a run that never finished (killed, out of time); "
                        "it is marked \"complete\": false")
    p.add_argument("--out", default=None, help="with --recover: where to write the recovered report (default: "
                                               "the journal's report path)")
    p.add_argument("--max-rows", type=POSITIVE, default=50)
    add_options(p, "plots", "html")
    p.set_defaults(run=cmd_report, outputs={"plots": True, "out": False, "html": False})

    p = sub.add_parser("merge", help="merge the JSON reports of shards (--editguard-shard i/n) into one")
    p.add_argument("files", nargs="+", help="shard reports written with --editguard-json, or folders holding the "
                                            "pieces of `editguard prepare --shard i/n` runs")
    p.add_argument("--json", "-o", "--out", default=None,
                   help="write the merged JSON report to this path (reports only)")
    p.set_defaults(run=cmd_merge, outputs={"json": False})

    p = sub.add_parser("compare", help="the no-regression gate: judge a JSON report case by case against a saved "
                                       "one (exit 1 on a regression); --equal: check that they are the same")
    p.add_argument("first", metavar="SAVED", help="the saved report (the baseline)")
    p.add_argument("second", metavar="CURRENT", help="the report to judge")
    add_options(p, "compare-fail", "markdown")
    p.add_argument("--equal", action="store_true",
                   help="instead: check that the two reports hold the same cases, verdicts and numbers (timings "
                        "ignored); exit 1 on any difference")
    p.add_argument("--rtol", type=checked_type(float, minimum=0), default=None,
                   help="with --equal: relative tolerance for numbers (default 1e-4)")
    p.add_argument("--max-lines", type=NON_NEGATIVE, default=30)
    p.set_defaults(run=cmd_compare, outputs={"markdown": False})
