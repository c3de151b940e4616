"""The `editguard` command: measurements outside pytest.

    editguard ppl --model smollm2-135m --corpus me-ppl-1k
    editguard stats --model smollm2-135m --layer 5 --tokens 100000
    editguard report out.json
"""

from __future__ import annotations

import argparse
import os
import sys


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="registered name, local dir or cached hub id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"),
                        help="data directory laid out like shared/data (default: $EDITGUARD_DATA)")


def cmd_ppl(args) -> int:
    from editguard.data import load_ppl_corpus
    from editguard.metrics.perplexity import perplexity
    from editguard.models import load_model
    from editguard.progress import progress_bar

    mue = load_model(args.model, args.device, args.dtype)
    sentences = load_ppl_corpus(args.corpus, args.data, download=args.download)
    with progress_bar(f"perplexity {args.model} on {args.corpus}", len(sentences)) as bar:
        result = perplexity(mue, sentences, progress=bar.advance)
    print(f"{args.model} {args.corpus} ({len(sentences)} sentences, {result.n_tokens} scored tokens): "
          f"ppl {result.ppl:.2f} (mean per sentence), corpus ppl {result.corpus_ppl:.2f} (token-weighted)")
    return 0


def cmd_stats(args) -> int:
    from editguard.data import load_text_corpus
    from editguard.editors.covariance import second_moment
    from editguard.models import load_model

    mue = load_model(args.model, args.device, args.dtype)
    layer = args.layer if args.layer is not None else mue.edit_layer
    mom2 = second_moment(mue, layer, load_text_corpus(args.corpus, args.data, download=args.download),
                         n_tokens=args.tokens)
    print(f"{args.model} layer {layer}: E[kkᵀ] {tuple(mom2.shape)} from {args.corpus}, trace {float(mom2.trace()):.4g} "
          f"(cached under {os.path.join('$EDITGUARD_CACHE', 'stats')})")
    return 0


def cmd_report(args) -> int:
    from rich.console import Console

    from editguard.report import load_report, render_report

    doc = load_report(args.json)
    console = Console() if sys.stdout.isatty() else Console(width=160)  # piped: no 80-column squeeze
    console.print(render_report(doc["run"], doc["cases"], max_rows=args.max_rows))
    return 1 if any(not c["passed"] for c in doc["cases"]) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="editguard", description="Safety measurements for LLM knowledge edits.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ppl", help="ME-PPL perplexity of an unedited model")
    _common(p)
    p.add_argument("--corpus", default="me-ppl-50", help="me-ppl-50, me-ppl-1k, me-ppl or a path")
    p.add_argument("--download", action="store_true", help="fetch missing public data files")
    p.set_defaults(run=cmd_ppl)

    p = sub.add_parser("stats", help="compute and cache the MLP key covariance of a layer")
    _common(p)
    p.add_argument("--layer", type=int, default=None, help="default: the model's edit layer")
    p.add_argument("--corpus", default="wikitext-2-raw")
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--download", action="store_true")
    p.set_defaults(run=cmd_stats)

    p = sub.add_parser("report", help="render the collapse report of a JSON report")
    p.add_argument("json")
    p.add_argument("--max-rows", type=int, default=50)
    p.set_defaults(run=cmd_report)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, LookupError, OSError) as err:
        print(f"editguard {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
