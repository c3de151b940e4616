"""What the `editguard` subcommands share: argument types, the option table's options, the
up-front output check, and the one set-up (data → editor → model → baseline) they all call."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editguard.cache import safe_name
from editguard.catalog import registered_names
from editguard.options import add_cli_options, checked_type
from editguard.run.recorder import prove_writable

POSITIVE = checked_type(int, minimum=1)
NON_NEGATIVE = checked_type(int, minimum=0)
DEFAULT_OUT = "out"  # where the commands write by default (out/screen-MODEL.json, ...)


def default_output(*parts: str, suffix: str = ".json") -> Path:
    """A command's default output path in DEFAULT_OUT, named from `parts` (a model, an editor: user
    strings such as `../../x` or a hub id `org/name`) joined by "-", as one safe file name: it
    stays inside DEFAULT_OUT (editguard.cache.safe_name)."""
    return Path(DEFAULT_OUT) / safe_name("-".join(str(p) for p in parts if p) + suffix)


def number_or(word: str):
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


def add_options(parser: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    """The option table's options, with the registered editor/model/task names in their help."""
    add_cli_options(parser, *names, registered=_registered(), **kwargs)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --data, --trust-remote-code: every command that loads a model."""
    add_options(parser, "model", "device", "dtype", "data", "trust-remote-code")


def check_outputs(args) -> None:
    """Every output path of the command (its `outputs`: dest -> is a folder), and the folder each
    unset one defaults into (its `default_outputs`: dest -> folder), checked before any work."""
    for dest, directory in getattr(args, "outputs", {}).items():
        prove_writable(f"--{dest.replace('_', '-')}", getattr(args, dest, None), directory=directory)
    for dest, folder in getattr(args, "default_outputs", {}).items():
        if getattr(args, dest, None) is None:
            prove_writable(f"--{dest.replace('_', '-')} (not given: its default folder)", folder, directory=True)


def console():
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)  # piped: no 80-column squeeze


@dataclass
class Setup:
    """What a command measures with: the model, and as asked the editor, the perplexity corpus's
    sentences, the unedited model's baseline and the gate thresholds."""

    mue: Any
    editor: Any = None
    sentences: list[str] | None = None
    baseline: Any = None
    thresholds: Any = None
    config: Any = None   # the run's RunConfig (its hparams: the --hparams file's, translated if EasyEdit's)


def run_config(args):
    """The command's arguments as the library's RunConfig (the options a command lacks: their
    defaults), so that the CLI opens its runs as the plugin does."""
    from editguard.options import OPTIONS_BY_NAME
    from editguard.run.config import RunConfig

    def value(name: str) -> Any:
        option = OPTIONS_BY_NAME[name]
        given = getattr(args, option.dest, None)
        if isinstance(given, list):   # a repeatable option given several times
            given = ",".join(given)
        return option.default if given is None else given

    return RunConfig.from_options(value, flag=lambda name: OPTIONS_BY_NAME[name].cli_flag,
                                  warn=lambda message: print(f"warning: {message}", file=sys.stderr))


def open_setup(args, *, editor: bool = False, corpus: bool = False, baseline: bool = False) -> Setup:
    """The one set-up of the model-loading commands: the --ppl-corpus sentences (with `corpus` or
    `baseline`; --download where the command has it), the --editor, then the run (model) opened
    by editguard.run.session.open_run as the plugin opens it, then the unedited model's baseline
    on the corpus (kept on disk across runs, as the plugin's). Data and editor come before the
    model, so a bad --data or --editor fails in a second, not after a model load; --ppl-threshold,
    where the command has it, gives the thresholds (the CLI measures against the collapse line,
    not a calibration: `calibrate` makes them)."""
    from editguard.run.session import open_run

    sentences = None
    if corpus or baseline:
        from editguard.data import load_ppl_corpus

        sentences = load_ppl_corpus(args.ppl_corpus, args.data, download=getattr(args, "download", False))
    config = run_config(args)
    chosen = None
    if editor:
        from editguard.editors.registry import get_editor

        chosen = get_editor(args.editor, config.hparams, data_dir=args.data)
    run = open_run(config)
    thresholds = None
    if "ppl_threshold" in vars(args):
        from editguard.gates import Thresholds

        thresholds = Thresholds(ppl_max=args.ppl_threshold)
    measured = run.baseline(args.ppl_corpus) if baseline else None
    return Setup(run.model, chosen, sentences, measured, thresholds, config)


def analysis_cases(spec: str, mue, data, n: int):
    """hardcf (the model's mined list, else a screen of the loaded `mue`), normal (a seeded
    CounterFact sample) or a case file."""
    from editguard.cases import read_cases
    from editguard.suites import hardcf, normal_sample

    if spec == "hardcf":
        cases = hardcf(mue.name, data, load=lambda: mue)
    elif spec == "normal":
        cases = normal_sample(n, data)
    else:
        cases = read_cases(spec)
    return list(cases)[:n]


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in ("condition", "group", "test") else "right")
    for row in rows:
        table.add_row(*[("–" if row[c] is None else f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]))
                        for c in columns])
    console().print(table)
