"""The JSON report: one run header and one record per case (the schema: editguard.run.records)."""

from __future__ import annotations

import datetime
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from editguard.cache import write_atomic
from editguard.errors import ReportError, bounded
from editguard.run.records import (
    READABLE_SCHEMAS,
    SCHEMA_VERSION,
    SUITE_FIELDS,
    RunHeader,
    check_case,
    check_run_header,
    complete_case,
    finite_json,
    restore_non_finite,
    versions,
)

# The header's old name.
RunInfo = RunHeader
__all__ = ["RunInfo", "SCHEMA_VERSION", "SUITE_FIELDS", "versions", "write_report", "load_report"]

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


def report_document(run: dict[str, Any], cases: list[dict[str, Any]],
                    completion: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as written: verdicts, counts, `complete` (true unless `completion` says otherwise)
    and the completion's other keys ("cases_not_run", "steps_not_run", ...); no NaN anywhere."""
    doc = {**with_verdicts(run, cases), "complete": True, **(completion or {})}
    doc["cases"] = [finite_json(c) for c in doc["cases"]]
    return finite_json(doc)


def write_report(path: str | Path, run: dict[str, Any], cases: list[dict[str, Any]],
                 completion: dict[str, Any] | None = None) -> Path:
    """Write the report atomically (a reader, or a run killed mid-write, never sees half a file);
    `completion` (top-level keys such as "complete": False, "cases_not_run") says when a run
    stopped early or had nothing to run."""
    path = Path(path)
    text = json.dumps(report_document(run, cases, completion), indent=1, ensure_ascii=False, allow_nan=False)
    write_atomic(path, text.encode("utf-8"))
    return path


def load_report(path: str | Path) -> dict[str, Any]:
    """A report written by editguard, checked: ReportError names the file, the case and the field
    that is not what the schema says (records.check_case); NaN/Inf are put back from `non_finite`."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err}); give a JSON report "
                          f"written by --editguard-json") from None
    if not isinstance(doc, dict) or "run" not in doc or "cases" not in doc:
        raise ReportError(f"{path}: not an editguard JSON report (expected keys 'run' and 'cases')")
    if not isinstance(doc["run"], dict) or not isinstance(doc["cases"], list):
        raise ReportError(f"{path}: not an editguard JSON report ('run' must be an object, 'cases' a list)")
    if doc.get("schema", 1) not in READABLE_SCHEMAS:
        raise ReportError(f"{path}: report schema {bounded(doc.get('schema'))}; this editguard reads schemas "
                          f"{', '.join(map(str, READABLE_SCHEMAS))} (a newer editguard wrote it?)")
    if "complete" in doc and not isinstance(doc["complete"], bool):
        raise ReportError(f"{path}: 'complete' is {bounded(doc['complete'])}; expected true or false")
    for index, case in enumerate(doc["cases"]):
        check_case(case, f"{path}: case {index}")
        complete_case(case, f"{path}: case {index}")
        restore_non_finite(case)
    check_run_header(doc["run"], str(path))
    return doc
