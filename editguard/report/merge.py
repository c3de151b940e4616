"""Merging the JSON reports of shards (`--editguard-shard i/n`) into one (comparing reports, gate
and equality check, is report/compare.py).

Shards are parts of one run: they must agree on what was tested (model weights, editor and its
hyperparameters, gates, perplexity corpus, dtype). Where they ran (device, package versions)
may differ; the merged header keeps the first shard's and lists the files it came from.
"""

from __future__ import annotations

from typing import Any

from editguard.errors import ReportError
from editguard.report.json_report import combine_runs, sort_cases

# Run fields that define what a result means; shards that differ in one cannot be merged.
RUN_IDENTITY = ("model", "model_fingerprint", "editor", "hparams", "thresholds", "dtype", "ppl_bos",
                "edit_precision")
# A suite module's fields that must agree where two shards ran the same module.
SUITE_IDENTITY = ("sequential", "ppl_corpus")
# Case fields (and diagnostics) that say how a run went, not what it measured: wall-clock times,
# and which cases' v* ROME searched together (xdist workers and shards search fewer ahead).
TIMING_FIELDS = ("seconds", "timings", "peak_memory_mb", "v_star_search")


class MergeError(ReportError, ValueError):
    """Reports that are not parts of one run."""


def case_key(case: dict[str, Any]) -> tuple[str, int, str]:
    """A case's identity inside a run: the same case may appear in several sequences."""
    return (case.get("sequence") or "", case.get("step") or 0, str(case["case_id"]))


def merge_reports(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Merge (name, report) pairs into one report; MergeError names the field and the files
    when they are not shards of one run, or when two shards hold the same case."""
    if not docs:
        raise MergeError("nothing to merge: give at least one JSON report")
    first_name, first = docs[0]
    schema = first.get("schema")
    seen: dict[tuple, str] = {}
    cases: list[dict[str, Any]] = []
    # A shard that got no test (more shards than units of work) ran nothing: its header holds only
    # the options, so it is checked for its shard label alone.
    ran = [(name, doc) for name, doc in docs if not is_empty_shard(doc)] or docs[:1]
    first_name, first = ran[0]
    for name, doc in docs:
        if doc.get("schema") != schema:
            raise MergeError(f"{name} has report schema {doc.get('schema')}, {docs[0][0]} has {schema}")
        if is_empty_shard(doc):
            continue
        for field in RUN_IDENTITY:
            mine, theirs = doc["run"].get(field), first["run"].get(field)
            if mine != theirs:
                raise MergeError(
                    f"cannot merge {name} into {first_name}: they differ in '{field}' "
                    f"({_short(mine)} vs {_short(theirs)}); shards of one run share model, editor, "
                    f"hparams, thresholds, dtype, the perplexity BOS rule and the edit precision")
        for module, fields in doc["run"].get("suites", {}).items():
            for other_name, other in docs:
                theirs = other["run"].get("suites", {}).get(module)
                for field in SUITE_IDENTITY:
                    if theirs is not None and theirs.get(field) != fields.get(field):
                        raise MergeError(f"cannot merge {name} and {other_name}: suite module {module} ran with "
                                         f"{field}={fields.get(field)!r} in one and {theirs.get(field)!r} in the other")
        for case in doc["cases"]:
            key = case_key(case)
            if seen.get(key) == name:
                raise MergeError(f"{name}: case {key[2]!r}{_where(key)} occurs twice in this one report")
            if key in seen:
                raise MergeError(f"case {key[2]!r}{_where(key)} is in both {seen[key]} and {name}: "
                                 f"the reports overlap (were they run with different --editguard-shard splits?)")
            seen[key] = name
            cases.append(case)
    _check_shards_complete(docs)
    run = {k: v for k, v in combine_runs([doc["run"] for _, doc in ran]).items() if k != "shard"}
    run["merged_from"] = [{"file": name, "shard": doc["run"].get("shard", ""), "cases": len(doc["cases"]),
                           "device": doc["run"].get("device")} for name, doc in docs]
    merged = {"schema": schema, "run": run, "cases": sort_cases(cases)}
    stops = _sequences_stopped(docs)
    if stops:
        merged["sequences_stopped"] = stops
    if any(doc.get("complete") is False for _, doc in docs):
        merged["complete"] = False
    not_run = [nodeid for _, doc in docs for nodeid in doc.get("cases_not_run") or []]
    if not_run:
        merged["cases_not_run"] = not_run
    deaths = [death for _, doc in docs for death in doc.get("workers_died") or []]
    if deaths:
        merged["workers_died"] = deaths
    return merged


def is_empty_shard(doc: dict[str, Any]) -> bool:
    """A shard's report that says it got no test (records.EmptyShard) and holds no case."""
    return bool(doc.get("empty_shard")) and not doc.get("cases")


def _sequences_stopped(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The shards' early-stopped sequences (by suite module); one module stopped in two shards
    with different records means they are not shards of one run."""
    stops: dict[str, Any] = {}
    where: dict[str, str] = {}
    for name, doc in docs:
        for module, stop in (doc.get("sequences_stopped") or {}).items():
            if module in stops and stops[module] != stop:
                raise MergeError(f"the sequence of {module} stopped differently in {where[module]} and {name}")
            stops[module], where[module] = stop, name
    return dict(sorted(stops.items()))


def _check_shards_complete(docs: list[tuple[str, dict[str, Any]]]) -> None:
    """Shards of one split (the same n) and all of them: 1/2 without 2/2 is not the whole run."""
    labels: dict[str, tuple[int, int]] = {}
    for name, doc in docs:
        label = doc["run"].get("shard") or ""
        try:
            index, count = (int(part) for part in label.split("/"))
        except ValueError:
            if label:
                raise MergeError(f"{name}: run.shard is {label!r}, expected i/n") from None
            continue
        labels[name] = (index, count)
    if not labels:
        return
    counts = {count for _, count in labels.values()}
    if len(counts) > 1 or len(labels) < len(docs):
        described = ", ".join(f"{name} ({'/'.join(map(str, labels[name])) if name in labels else 'not a shard'})"
                              for name, _ in docs)
        raise MergeError(f"cannot merge shards of different splits: {described}; merge the shards of one "
                         f"--editguard-shard i/n split")
    count = counts.pop()
    missing = sorted(set(range(1, count + 1)) - {index for index, _ in labels.values()})
    if missing:
        raise MergeError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}/{count}' for i in missing)} "
                         f"missing: got {', '.join(f'{name} ({i}/{count})' for name, (i, _) in labels.items())}")


def _where(key: tuple) -> str:
    return f" (sequence {key[0]}, step {key[1]})" if key[0] else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
