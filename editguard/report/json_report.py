"""The JSON report: one run header and one record per case (CaseResult.to_json())."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("editguard", "torch", "transformers", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit(directory: str | os.PathLike) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git checkout holding `directory`; None where git is missing or
    `directory` is not in a repository (a report never fails for want of git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def invocation(argv: list[str] | None = None, started: datetime.datetime | None = None,
               cwd: str | None = None) -> dict[str, Any]:
    """How a run was started: the command line (sys.argv), the working directory and its git
    commit (None outside a repository), and the start time (ISO 8601, UTC; default now). The
    editguard version is in `versions`."""
    cwd = cwd or os.getcwd()
    started = started or datetime.datetime.now(datetime.timezone.utc)
    return {"argv": list(sys.argv if argv is None else argv), "cwd": cwd, "git": git_commit(cwd),
            "started_utc": started.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")}


@functools.cache
def process_invocation() -> dict[str, Any]:
    """This process's invocation, taken once (a run header is built per case)."""
    return invocation()


@dataclass
class RunInfo:
    model: str
    editor: str
    hparams: dict[str, Any]
    thresholds: dict[str, float]
    baseline_ppl: float
    baseline_corpus_ppl: float
    ppl_corpus: str
    model_fingerprint: str
    device: str
    dtype: str
    seed: int = 0
    ppl_bos: str = "never"     # BOS rule of every perplexity in the run (--ppl-bos; never: the papers')
    calibration: str = ""      # where the gate bounds come from (editguard calibrate, or the defaults)
    suite: str = ""
    suite_source: str = ""     # where the suite's cases came from (mined list, screen, ...)
    cases_total: int | None = None      # cases the suite module's source holds
    cases_selected: int | None = None   # of those, selected to run (--max-cases keeps the first N)
    sequential: bool = False
    shard: str = ""            # "i/n" when this run is one shard of a larger one (--editguard-shard)
    # Per suite module: its own SUITE_FIELDS (a run may mix single-edit and sequential suites).
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Quality mode's suite-level gates (editguard.gates.QualityGates.to_dict()); None: off.
    quality: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=versions)
    # Command line, working directory, git commit, start time (the plugin's controller puts its own).
    invocation: dict[str, Any] = field(default_factory=lambda: dict(process_invocation()))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Fields that belong to one suite module rather than to the whole run.
SUITE_FIELDS = ("suite", "suite_source", "cases_total", "cases_selected", "sequential", "ppl_corpus", "baseline_ppl",
                "baseline_corpus_ppl")


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One header from the headers of a run's tests (or of merged shards): the run-wide fields of
    the first, `suites` gathered from all, and the top-level suite fields taken from the first
    suite module by name, so the header does not depend on which test happened to run first."""
    suites: dict[str, dict[str, Any]] = {}
    for run in runs:
        for module, fields in run.get("suites", {}).items():
            suites.setdefault(module, fields)
    combined = {**runs[0], "suites": dict(sorted(suites.items()))}
    if suites:
        combined.update(next(iter(combined["suites"].values())))
    return combined


def sort_cases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's case order: by case id, then sequence and step (one order for every writer)."""
    return sorted(cases, key=lambda c: (str(c["case_id"]), c.get("sequence") or "", c.get("step") or 0))


def with_verdicts(run: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The report document: every case with its `verdict` (passed / failed gate / collapsed) and
    `next_step`, a `summary` of the counts (editguard.report.verdicts) and, in quality mode, the
    run's `quality` rates and gates (editguard.report.quality)."""
    from editguard.report.quality import quality_summary
    from editguard.report.verdicts import next_step, summarise, verdict

    ppl_max = run["thresholds"]["ppl_max"]
    cases = [{**c, "verdict": verdict(c, ppl_max), "next_step": next_step(c, run)} for c in sort_cases(cases)]
    quality = quality_summary(run, cases)
    return {"schema": SCHEMA_VERSION, "run": run, "summary": summarise(run, cases),
            **({"quality": quality} if quality is not None else {}), "cases": cases}


def write_report(path: str | Path, run: dict[str, Any], cases: list[dict[str, Any]],
                 completion: dict[str, Any] | None = None) -> Path:
    """Write the report; `completion` (top-level keys such as "complete": False, "cases_not_run")
    says when a run stopped early or had nothing to run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**with_verdicts(run, cases), **(completion or {})}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    return path


def load_report(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    if not isinstance(doc, dict) or "run" not in doc or "cases" not in doc:
        raise ValueError(f"{path}: not an editguard JSON report (expected keys 'run' and 'cases')")
    if not isinstance(doc["run"], dict) or not isinstance(doc["cases"], list):
        raise ValueError(f"{path}: not an editguard JSON report ('run' must be an object, 'cases' a list)")
    for index, case in enumerate(doc["cases"]):
        if not isinstance(case, dict) or "case_id" not in case or "passed" not in case:
            raise ValueError(f"{path}: case {index} is not a case record (expected an object with 'case_id' "
                             f"and 'passed')")
    return doc
