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
The subcommands live by purpose in measure (ppl, stats, eval), curate (screen, mine,
calibrate, filter), reports (report, merge, compare, plot) and research (analyze, train-mend);
common holds their one set-up (data → editor → model → baseline).

An error editguard raises on purpose (editguard.errors) ends the command with one line on
stderr, `editguard COMMAND: message`, and its exit code; see EXIT_CODES.
"""

from __future__ import annotations

import argparse
import sys

from editguard.cli import curate, measure, reports, research
from editguard.cli.common import check_outputs
from editguard.errors import EXIT_USAGE, EditguardError
from editguard.models.registry import ppl_bos_for
from editguard.options import data_dir

EXIT_CODES = """exit codes:
  0  success
  1  a gate failed: a regression or worsening in `compare` (a difference with --equal),
     failed cases in `report`
  2  nothing was judged: a bad option or argument, missing or malformed data or case files,
     a model that does not load, the editor's set-up, the cache, a report that cannot be read
     or an output that cannot be written (checked before the work); one line on stderr says
     what and where"""


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("editguard")
    except md.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editguard", description="Safety measurements for LLM knowledge edits.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"editguard {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (measure, curate, reports, research):
        module.register(sub)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse's own errors: usage on stderr, exit 2
    if args.command == "analyze" and args.editor is None:
        args.editor = "rome" if args.what == "positions" else "c-rome"
    try:
        # Output paths are checked before the work, not after it: a long mine/eval run must not be lost.
        check_outputs(args)
        if "data" in vars(args):
            args.data = data_dir(args.data)
        if "ppl_bos" in vars(args):
            args.ppl_bos = ppl_bos_for(args.model, args.ppl_bos)
        return args.run(args)
    except EditguardError as err:
        print(f"editguard {args.command}: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except (ValueError, LookupError, OSError) as err:  # bad input that library code reports with a builtin
        print(f"editguard {args.command}: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE

