"""The options of editguard, defined once for the pytest plugin and the `editguard` command.

Naming scheme: an option's canonical `name` is what the CLI accepts (`--NAME`) and what its ini
key is derived from (`editguard_NAME`, dashes as underscores). In a pytest run, where the options
of every plugin and conftest share one namespace, every option is `--editguard-NAME`; options not
marked `namespaced` also get the design card's short form `--NAME` (`pytest --editor=rome
--model=llama2-7b suites/hardcf`), but only where nobody else has registered it: the plugin adds
the short forms after the project's own conftests (pytest_editguard.settings.add_short_forms), so
installing editguard never breaks another project's options. `namespaced` options (data,
download, trust-remote-code, shard, json, plots: generic words) have no short form.

This module is pure data (a leaf): it imports nothing of editguard and nothing heavy, so the
plugin can read it at start-up and `editguard --help` builds without torch.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_EDITOR = "rome"
# The papers' perplexity corpora: ME-PPL_50 after one edit, ME-PPL_1k along a sequence of edits.
SINGLE_EDIT_PPL_CORPUS = "me-ppl-50"
SEQUENCE_PPL_CORPUS = "me-ppl-1k"
COLLAPSE_PPL = 1000.0  # perplexity above which an edited model counts as collapsed
DATA_ENV = "EDITGUARD_DATA"
PRECISIONS = ("auto", "float32", "bfloat16")   # --editguard-downstream-precision, --editguard-edit-precision
DTYPES = ("float32", "bfloat16", "float16")
# The gates' defaults, in this one place (editguard.gates.Thresholds and the options take them from
# here; a model's calibration replaces them, docs: concepts/gates.md). Relative perplexity: a doubling is far
# beyond what a working edit costs (normal cases move ME-PPL_50 by < 1% on the embedded model).
PPL_MAX_RATIO = 2.0
# ROME's denominator with the key actually used, over the one with k̄: 1 when keys are consistent;
# the papers' collapsing cases sit near 0.01.
DENOMINATOR_RATIO_MIN = 0.1
# ‖ΔW‖_F / ‖W‖_F of any touched matrix: 3 × the largest value (0.112) that ROME gave on 20 normal
# CounterFact cases of the model it was calibrated on (bench/results/calibration.json).
UPDATE_NORM_MAX = 0.35
# The measure that bound applies to, ‖ΔW‖_F/‖W‖_F: the one spelling of its name in records,
# diagnostics and gates.
UPDATE_NORM_REL = "update_norm_rel"
CALIBRATION_MODEL = "smollm2-135m"
# `editguard calibrate`: how many normal CounterFact cases it edits, and its sample's seed (the
# normal suite samples with seed 0; the calibration takes other cases).
DEFAULT_CALIBRATION_CASES = 20
DEFAULT_CALIBRATION_SEED = 1
# BOS before each perplexity sentence: never (the papers' ppl.py, on every model), where the
# tokenizer itself adds one (Llama-2, Gemma; not GPT-2 or SmolLM2), or always.
PPL_BOS_CHOICES = ("never", "tokenizer", "always")
DEFAULT_PPL_BOS = "never"
SEQUENCE_ON_ERROR = ("stop", "continue")  # what a sequence does after a step raises
# Quality mode's efficacy minimum, compared with the one-sided 95% Wilson lower bound of the run's
# efficacy (docs: concepts/gates.md, quality mode): 10 of 10 edits give a bound of 0.787, so a 10-case run can pass
# 0.7; 0.8 needs at least 11 cases, all successful.
QUALITY_MIN_EFFICACY = 0.7
DEFAULT_SEQUENCE_LENGTH = 10  # steps of each sequential suite unless --sequence-length says otherwise


@dataclass(frozen=True)
class Option:
    name: str
    type: type          # str, int, float, or bool for a flag
    default: Any
    help: str
    namespaced: bool = False   # no short --NAME form in pytest (see the module docstring)
    default_help: str = ""     # how help shows a default that is not a plain value
    # The valid values, checked by `parse` in both front ends (a NaN or negative bound would
    # silently turn a gate off or fail everything).
    minimum: float | None = None        # inclusive
    above: float | None = None          # exclusive lower bound
    maximum: float | None = None        # inclusive
    choices: tuple[str, ...] = ()   # the only values accepted, where the set is closed
    finite: bool = True                 # floats: refuse nan and inf
    metavar: str = ""                   # the value's name in help (NAME, PATH, N, ...); "" for flags
    repeatable: bool = False            # may be given several times; the values are joined with commas

    def parse(self, raw: Any) -> Any:
        """`raw` (a command-line or ini string, or a value) converted to the option's type and
        checked against its range; ValueError saying what was expected."""
        try:
            value = self.type(raw)
        except (TypeError, ValueError):
            value = None
        expected = expected_value(value, self.type, minimum=self.minimum, above=self.above, maximum=self.maximum,
                                  finite=self.finite, choices=self.choices)
        if expected:
            shown = repr(raw)   # bounded: an error message never echoes an unbounded value
            raise ValueError(f"expected {expected}, got {shown if len(shown) <= 200 else shown[:175] + '...'}")
        return value

    def cli_type(self):
        """An argparse `type=` callable: `parse`, its message shown by argparse (exit 2)."""
        def parse(raw: str) -> Any:
            try:
                return self.parse(raw)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        parse.__name__ = self.type.__name__
        return parse

    @property
    def is_flag(self) -> bool:
        return self.type is bool

    @property
    def cli_flag(self) -> str:
        return f"--{self.name}"

    @property
    def pytest_flag(self) -> str:
        return f"--editguard-{self.name}"

    @property
    def short_flag(self) -> str | None:
        """The pytest short form, registered where it is free; None for namespaced options."""
        return None if self.namespaced else self.cli_flag

    @property
    def ini_key(self) -> str:
        return "editguard_" + self.name.replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def help_with_default(self, default: Any, shown: str = "", names: dict[str, str] | None = None) -> str:
        """The help text with the default: `shown` if given, else `default_help` for the option's own
        default, else the value unless it is off/unset. `names` fills the help's {editors}, {models}
        and {tasks} (the front ends pass editguard.catalog.registered_names())."""
        text = self.help_text(names)
        shown = shown or (self.default_help if default == self.default else "")
        if shown:
            return f"{text} (default: {shown})"
        if self.is_flag or default is False:
            return f"{text} (default: off)"
        return f"{text} (default: {'none' if default is None else default})"

    def argparse_help(self, default: Any, shown: str = "", names: dict[str, str] | None = None) -> str:
        """`help_with_default` for an argparse parser (pytest's too), which %-formats help texts."""
        return self.help_with_default(default, shown, names).replace("%", "%%")

    def help_text(self, names: dict[str, str] | None = None) -> str:
        """The help with its registry placeholders filled (or pointing at the error that lists them)."""
        fill = {key: "an unknown name lists them" for key in ("editors", "models", "tasks")}
        return self.help.format_map({**fill, **(names or {})})


def expected_value(value: Any, kind: type, *, minimum: float | None = None, above: float | None = None,
                   maximum: float | None = None, finite: bool = True, choices: tuple = ()) -> str:
    """The one range check of options and editor hyperparameters: "" when `value` (already of
    type `kind`, or None where it could not be converted) is valid, else the valid values in
    words (e.g. "a finite number > 0", "an integer ≥ 1", "one of a, b")."""
    if choices:
        return "" if value in choices else "one of " + ", ".join(map(str, choices))
    numeric = kind in (int, float)
    words = {int: "an integer", float: "a finite number" if finite else "a number"}.get(kind, kind.__name__)
    bounds = [f"≥ {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"≤ {maximum:g}" if maximum is not None else ""]
    expected = " ".join([words, " and ".join(b for b in bounds if b)]).strip()
    valid = value is not None and not (numeric and (
        (kind is float and finite and not math.isfinite(value))
        or (minimum is not None and not value >= minimum)
        or (above is not None and not value > above)
        or (maximum is not None and not value <= maximum)))
    return "" if valid else expected


OPTIONS: tuple[Option, ...] = (
    Option("editor", str, DEFAULT_EDITOR,
           "editing algorithm under test: a built-in or installed name ({editors}), or package.module:Class",
           metavar="NAME"),
    Option("model", str, DEFAULT_MODEL,
           "model to edit: a registered name ({models}), a local directory, or a Hugging Face Hub id ORG/NAME or "
           "ORG/NAME@REVISION (a branch, tag or commit) read from the local Hugging Face cache (HF_HUB_CACHE, else "
           "HF_HOME/hub); fetched only with --editguard-download", metavar="NAME"),
    Option("device", str, "auto",
           "auto, cpu, cuda or cuda:N (auto: the GPU if there is one; with pytest -n N and several GPUs, worker i "
           "takes cuda:i)", metavar="{auto,cpu,cuda,cuda:N}"),
    Option("devices", str, None,
           "comma-separated devices for pytest-xdist workers, worker i takes the i-th (mod their number), "
           "e.g. cuda:0,cuda:1 or cpu,cpu", metavar="LIST", default_help="none: every worker uses --device"),
    Option("dtype", str, "float32", "weights' dtype: " + ", ".join(DTYPES), metavar="DTYPE", choices=DTYPES),
    Option("edit-layer", int, None, "layer to edit", metavar="N", default_help="the model's registered layer",
           minimum=0),
    Option("hparams", str, None, "editor hyperparameter overrides: a .json, .yaml or .yml file", metavar="PATH",
           default_help="none: the editor's defaults for the model"),
    Option("data", str, None, "data directory laid out like shared/data", namespaced=True,
           default_help=f"env {DATA_ENV}", metavar="PATH"),
    Option("download", bool, False,
           "fetch missing public data files, and a Hugging Face Hub model (--model=ORG/NAME[@REVISION]) the local "
           "cache lacks, into the cache instead of failing", namespaced=True),
    Option("trust-remote-code", bool, False,
           "let a model whose files ship their own code (its config.json's auto_map names a class transformers does "
           "not implement) run that code while it loads; without it such a model is refused", namespaced=True),
    Option("ppl-corpus", str, None, "perplexity corpus: me-ppl-50, me-ppl-1k, me-ppl, or a path (.json/.txt)",
           default_help=f"{SINGLE_EDIT_PPL_CORPUS} for single edits, {SEQUENCE_PPL_CORPUS} for sequences, "
           "as the papers", metavar="NAME|PATH"),
    Option("ppl-bos", str, None,
           "BOS before each perplexity sentence: never (as the papers computed ME-PPL, on every model), tokenizer "
           "(where the model's tokenizer adds one itself, e.g. Llama-2, Gemma) or always", metavar="RULE",
           choices=PPL_BOS_CHOICES,
           default_help=f"the model's registered rule: {DEFAULT_PPL_BOS}, tokenizer for gemma3-270m (always run "
                        "with its BOS)"),
    Option("sequential", bool, False,
           "apply each suite module's cases as one sequence without restoring in between (the model is "
           "restored and verified after the module); suites/sequential is always sequential"),
    Option("sequence-on-error", str, "stop",
           "after a sequence step raises: stop (later steps are skipped, naming the failed step) or continue "
           "(from the weights as they were before the failed step)", metavar="ACTION", choices=SEQUENCE_ON_ERROR),
    Option("sequence-length", int, None,
           "cases in each sequence of the sequential suites (suites/sequential), drawn deterministically from the "
           "suite's source: the hard list in order, a seeded sample of normal cases", metavar="N",
           default_help=f"{DEFAULT_SEQUENCE_LENGTH}", minimum=1),
    Option("ppl-every", int, 1,
           "in sequences: measure perplexity (and downstream, and judge the perplexity gates) after steps K, 2K, … "
           "and always after the last; other steps record the edit's diagnostics and efficacy, ppl null",
           metavar="K", minimum=1),
    Option("sequence-stop-on-collapse", str, "on",
           "on: a sequence stops at the first measured perplexity above the collapse line (later steps skipped, "
           "the model restored and verified, the JSON report says where); off: it runs to the end",
           metavar="{on,off}", choices=("on", "off")),
    Option("batch-size", int, 1,
           "edit B cases in one call (editors that edit in batches: memit, alphaedit, ft, mend; the ROME family "
           "refuses): a suite's cases are grouped into batches of B in order, one test and one verdict per batch; in "
           "a sequence each step is one batch", metavar="B", minimum=1),
    Option("ppl-threshold", float, COLLAPSE_PPL, "collapse line for perplexity", metavar="PPL", above=0),
    Option("ppl-max-ratio", float, PPL_MAX_RATIO, "largest allowed edited/unedited perplexity ratio", metavar="RATIO",
           above=0),
    Option("denominator-ratio-min", float, DENOMINATOR_RATIO_MIN,
           "smallest allowed ROME denominator ratio (key used vs k̄)", metavar="RATIO", minimum=0),
    Option("update-norm-max", float, UPDATE_NORM_MAX,
           "largest allowed ‖ΔW‖_F/‖W‖_F of a touched matrix",
           default_help=f"the model's calibration (editguard calibrate), else {UPDATE_NORM_MAX:g}, calibrated on "
           f"{CALIBRATION_MODEL} (3 × the largest of 20 normal ROME edits, docs: concepts/gates.md)", metavar="RATIO",
           above=0),
    Option("max-cases", int, None, "use only the first N cases (in pytest: of each suite module, after "
           "--sequence-length drew a sequence; deterministic)",
           metavar="N", default_help="all", minimum=1),
    Option("shard", str, None,
           "run only shard i of n (e.g. 2/4) of the collected cases, split deterministically (a sequence stays "
           "whole); merge the shards' JSON reports with `editguard merge`", namespaced=True, metavar="I/N",
           default_help="none: every case"),
    Option("json", str, None, "write the JSON report to this path", namespaced=True, metavar="PATH",
           default_help="none: no JSON report"),
    Option("markdown", str, None,
           "write a Markdown summary (counts, worst cases, regressions) to this path, e.g. \"$GITHUB_STEP_SUMMARY\"",
           namespaced=True, metavar="PATH", default_help="none: no Markdown summary"),
    Option("html", str, None,
           "write a self-contained HTML report to this path (counts, a sortable table of the cases filterable by "
           "verdict, reasons and next steps, plots inline, the comparison): one file, no network",
           namespaced=True, metavar="PATH", default_help="none: no HTML report"),
    Option("compare", str, None,
           "compare every case with this saved JSON report of the same model and suite (any editor): a case that "
           "passed there and fails now is a regression and fails the run", namespaced=True, metavar="PATH",
           default_help="none: no comparison"),
    Option("compare-fail", str, None,
           "with --editguard-compare, also fail on a case whose field worsened beyond a margin: FIELD:N% (relative "
           "to the saved value) or FIELD:N (absolute), for ppl, corpus_ppl, update_norm_rel, blast_radius, "
           "denominator_ratio, key_cosine; `efficacy` fails on a lost efficacy; comma-separated or repeated, "
           "e.g. ppl:10%,update_norm_rel:0.05", namespaced=True, metavar="SPEC", default_help="none: regressions only",
           repeatable=True),
    Option("fuzz-examples", int, 12,
           "examples per Hypothesis fuzz test in the derandomized CI profile 'editguard-ci' (suites/fuzz)",
           metavar="N", minimum=1),
    Option("plots", str, None,
           "write PNG plots (perplexity per case, edit anatomy, perplexity evolution of sequences) into this "
           "directory", namespaced=True, metavar="DIR", default_help="none: no plots"),
    Option("hparams-any-family", bool, False,
           "use an EasyEdit --hparams file on a model of another family than the one its module templates "
           "name (its values were tuned for that family's model)", namespaced=True),
    Option("stats-dir", str, None,
           "covariance statistics downloaded for ROME/MEMIT or computed by EasyEdit: their layer_stats .npz files, "
           "laid out as DIR/MODEL/DATASET_stats/MODULE_DTYPE_mom2_N.npz (MODEL: the model's name, its Hugging Face "
           "path with / as _, or the path's last part); the file the hyperparameters name (mom2_dataset, "
           "mom2_n_samples, mom2_dtype) is used where the editor uses C (ROME with mom2_adjustment, MEMIT, "
           "AlphaEdit) instead of computing it on mom2_corpus; found and checked at start-up", namespaced=True,
           metavar="DIR", default_help="none: C is computed on the editor's mom2_corpus"),
    Option("downstream", str, None,
           "probe every edited model on these downstream tasks and gate on them, comma-separated: {tasks}",
           metavar="TASKS", default_help="off"),
    Option("downstream-n", int, 200, "items per downstream task: a seeded, fixed random subset of N (see "
           "--editguard-downstream-limit for lm-eval's first N)", metavar="N", minimum=1),
    Option("downstream-limit", int, None,
           "score the first N items of each downstream task instead of a seeded subset, as lm-eval's --limit N "
           "takes them (per subject for MMLU), so the numbers compare with an lm-eval run", metavar="N", minimum=1,
           default_help="off: the seeded subset of --downstream-n"),
    Option("lm-eval-json", str, None,
           "write the downstream scores in lm-evaluation-harness's results layout ({{\"results\", \"n-shot\", "
           "\"n-samples\", \"versions\", \"configs\", ...}}) to this path; in a pytest run the unedited model's at "
           "the top level and each edit's under \"post_edit\"", namespaced=True, metavar="PATH",
           default_help="none"),
    Option("downstream-min-retention", float, None,
           "also require edited accuracy ≥ this × the unedited model's on each downstream task, e.g. 0.9",
           metavar="R", default_help="off", above=0, maximum=1),
    Option("downstream-precision", str, "auto",
           f"precision of the downstream probes: {', '.join(PRECISIONS)} (auto: bfloat16 autocast where "
           "the CPU/GPU multiplies it fast, else float32)", metavar="PRECISION", choices=PRECISIONS),
    Option("threads", int, None,
           "torch's CPU threads in each process (matrix products and element-wise work)", namespaced=True,
           metavar="N", minimum=1,
           default_help="torch's own (OMP_NUM_THREADS, else one per core); under pytest -n N: the CPUs this "
                        "process may use, divided among the N workers (at least 1 each)"),
    Option("edit-precision", str, "float32",
           f"precision of the edit's v* search (ROME, C-ROME, r-ROME, MEMIT, AlphaEdit) and of the perplexity "
           f"probe, baseline included: {', '.join(PRECISIONS)} (auto: bfloat16 autocast where the CPU/GPU multiplies "
           "it fast, else float32; weights and the update itself stay in the model's dtype)", namespaced=True,
           metavar="PRECISION", choices=PRECISIONS),
    Option("quality", bool, False,
           "editor-quality mode: measure generalization (paraphrases) and locality (neighbourhood prompts) of "
           "every edit and fail the run unless the efficacy rate's Wilson lower bound (one-sided, z = 1.645) over all "
           f"cases is ≥ --editguard-min-efficacy (default {QUALITY_MIN_EFFICACY:g} in this mode)", namespaced=True),
    Option("min-efficacy", float, None,
           "fail the run unless the Wilson lower bound (one-sided, z = 1.645) of the efficacy rate over all cases is ≥ "
           "this; turns on quality mode", namespaced=True, metavar="RATE",
           default_help=f"off; {QUALITY_MIN_EFFICACY:g} with --editguard-quality", minimum=0, maximum=1),
    Option("min-generalization", float, None,
           "fail the run unless the Wilson lower bound of the generalization rate (paraphrase prompts preferring "
           "the new target) is ≥ this; turns on quality mode", namespaced=True, metavar="RATE", default_help="off",
           minimum=0, maximum=1),
    Option("min-locality", float, None,
           "fail the run unless the Wilson lower bound of the locality rate (neighbourhood prompts still preferring "
           "the true target) is ≥ this; turns on quality mode", namespaced=True, metavar="RATE", default_help="off",
           minimum=0, maximum=1),
)

OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


def checked_type(kind: type, **valid: Any):
    """An argparse `type=` for a command's own argument (not in the table), checked like a table
    option: checked_type(int, minimum=1)."""
    return Option("value", kind, None, "", **valid).cli_type()


def data_dir(value: str | None) -> str | None:
    """The data directory: the option's value, else the environment's."""
    return value or os.environ.get(DATA_ENV)


def add_cli_options(parser, *names: str, shown_defaults: dict[str, str] | None = None,
                    registered: dict[str, str] | None = None, **defaults: Any) -> None:
    """Add the named table options to an argparse parser, as `--NAME`. `defaults` (by dest) give a
    subcommand its own default where the pytest one does not fit; `shown_defaults` (by dest) say in
    words what a default means; `registered` fills the help's name lists."""
    shown_defaults = shown_defaults or {}
    for name in names:
        option = OPTIONS_BY_NAME[name]
        default = defaults.pop(option.dest, option.default)
        if option.is_flag:
            parser.add_argument(option.cli_flag, action="store_true",
                                help=option.argparse_help(False, names=registered))
        elif option.repeatable:
            parser.add_argument(option.cli_flag, action="append", type=option.cli_type(), default=default,
                                metavar=option.metavar or None,
                                help=option.argparse_help(default, shown_defaults.get(option.dest, ""),
                                                          registered))
        else:
            parser.add_argument(option.cli_flag, type=option.cli_type(), default=default,
                                metavar=option.metavar or None, choices=option.choices or None,
                                help=option.argparse_help(default, shown_defaults.get(option.dest, ""),
                                                          registered))
    if defaults:
        raise TypeError(f"defaults for options not added: {', '.join(defaults)}")
