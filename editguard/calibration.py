"""Per-model gate calibration (`editguard calibrate`): what an intact edit looks like on a model.

A gate bound calibrated on one model false-alarms on another (tiny-llama's normal ROME edits
have ‖ΔW‖/‖W‖ 0.36–0.40, above SmolLM2's 0.35). `calibrate` edits N seeded normal CounterFact
cases (subject not first) and records, per model fingerprint and editor, the distributions of
the denominator ratio, ‖ΔW‖/‖W‖, blast radius and perplexity ratio, and derives the bounds with
BOUND_RULE. Stored in the cache (calibration/<fingerprint>-<editor>.json) and, for the
shipped models, in the repository beside the mined lists (suites/calibration/<model>-<editor>.json).
`find_calibration` gives the plugin the calibration of the model under test; explicit options
still win over it.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from editguard.cache import cache_dir, locked, read_entry, safe_name, write_entry
from editguard.editors.api import editor_hparams
from editguard.errors import DataError, bounded
from editguard.files import parse_config_text
from editguard.gates import Thresholds, is_collapsed
from editguard.guard import check
from editguard.options import CALIBRATION_MODEL, COLLAPSE_PPL, DEFAULT_EDITOR, OPTIONS_BY_NAME, UPDATE_NORM_REL
from editguard.report.json_report import versions
from editguard.suite_files import find_suite_file, prepared_file

CALIBRATION_SCHEMA = 1
MARGIN = 3.0
BOUND_RULE = (
    f"update_norm_rel_max = {MARGIN:g} × the largest normal ‖ΔW‖/‖W‖; denominator_ratio_min = the smallest "
    f"normal denominator ratio / {MARGIN:g}; ppl_max_ratio = max(2, 1 + {MARGIN:g} × (largest normal perplexity "
    "ratio − 1)); where the model's mined list holds collapsing edits (ppl > collapse line) and a bound would "
    "reach them, the bound is the midpoint between the normal extreme and the collapsing one"
)
# Measurements recorded per case (CaseResult.to_json names) and the calibration's names for them.
METRICS = ("denominator_ratio", UPDATE_NORM_REL, "blast_radius", "ppl_ratio", "key_cosine")
GATED_BOUNDS = ("update_norm_rel_max", "denominator_ratio_min", "ppl_max_ratio")
# Each bound read from a file is checked as its command-line option is (finite, in range): a
# `"ppl_max_ratio": NaN` would otherwise turn the ratio gate off.
BOUND_OPTIONS = {"update_norm_rel_max": "update-norm-max", "denominator_ratio_min": "denominator-ratio-min",
                 "ppl_max_ratio": "ppl-max-ratio"}
# Which editors a calibration serves: the editor it was made with, and for ROME its variants, which
# share ROME's update rule and measurements (C-ROME and R-ROME differ only in the key used at edit
# and test time, which is what the gates judge). Any other editor gets the uncalibrated defaults,
# with a warning that says so: MEMIT spreads an edit over several layers and FT has no
# denominator, so ROME's ‖ΔW‖/‖W‖ bound means nothing for them.
CALIBRATION_SERVES: dict[str, tuple[str, ...]] = {"rome": ("rome", "c-rome", "r-rome")}


def serves(calibrated_with: str, editor: str) -> bool:
    """Whether a calibration made with `calibrated_with` gives the bounds of `editor` (CALIBRATION_SERVES)."""
    return editor == calibrated_with or editor in CALIBRATION_SERVES.get(calibrated_with, ())


def served_by(editor: str) -> list[str]:
    """The editors whose calibration serves `editor`, its own first."""
    return list(dict.fromkeys([editor, *(c for c in CALIBRATION_SERVES if serves(c, editor))]))


class CalibrationWarning(UserWarning):
    """The gate defaults serve a model they were not calibrated on."""


class CalibrationError(DataError, ValueError):
    """A calibration that cannot be made or read (no usable case, a damaged file)."""


@dataclass(frozen=True)
class Calibration:
    """A stored calibration: the document `calibrate` writes (to_json/from_json round-trip)."""

    doc: dict[str, Any]

    @property
    def bounds(self) -> dict[str, float]:
        return dict(self.doc["bounds"])

    def describe(self, editor: str | None = None) -> str:
        """The report header's sentence; for an `editor` other than the calibration's own, why it serves."""
        d = self.doc
        text = (f"gates calibrated on {d['n_cases']} normal cases of {d['model']} with {d['editor']} "
                f"({d['date']}, editguard {d['editguard_version']})")
        if editor and editor != d["editor"]:
            text += (f", serving {editor}: a {d['editor']} calibration serves "
                     f"{', '.join(CALIBRATION_SERVES.get(d['editor'], (d['editor'],)))}")
        return text


def _distribution(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def _collapsing_extremes(mined: dict[str, Any] | None, editor: str, ppl_max: float) -> dict[str, float] | None:
    """The smallest ‖ΔW‖/‖W‖ and the largest denominator ratio among the collapsing edits of a
    mined list made with `editor`; None when it holds none."""
    if not mined or mined.get("run", {}).get("editor") != editor:
        return None
    rows = [m for m in mined.get("measurements") or [] if isinstance(m, dict)
            and isinstance(m.get("ppl"), (int, float, type(None))) and is_collapsed(m.get("ppl"), ppl_max)]

    def finite(value: Any) -> bool:   # a mined file is read from disk: NaN, strings and booleans are skipped
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    norms = [m[UPDATE_NORM_REL] for m in rows if finite(m.get(UPDATE_NORM_REL))]
    ratios = [m["denominator_ratio"] for m in rows if finite(m.get("denominator_ratio"))]
    if not norms and not ratios:
        return None
    out = {"n": len(rows)}
    if norms:
        out["update_norm_rel_min"] = min(norms)
    if ratios:
        out["denominator_ratio_max"] = max(ratios)
    return out


def derive_bounds(distributions: dict[str, dict[str, Any]], collapsing: dict[str, float] | None) -> dict[str, float]:
    """The gate bounds by BOUND_RULE from the normal cases' distributions (and the collapsing
    cases' extremes, where known). Defaults stand for a gate whose measurement is missing."""
    defaults = Thresholds()
    collapsing = collapsing or {}
    bounds = {"update_norm_rel_max": defaults.update_norm_rel_max,
              "denominator_ratio_min": defaults.denominator_ratio_min,
              "ppl_max_ratio": defaults.ppl_max_ratio}
    if UPDATE_NORM_REL in distributions:
        normal = distributions[UPDATE_NORM_REL]["max"]
        bound = MARGIN * normal
        worst = collapsing.get("update_norm_rel_min")
        if worst is not None and normal < worst <= bound:
            bound = (normal + worst) / 2
        bounds["update_norm_rel_max"] = bound
    if "denominator_ratio" in distributions:
        normal = distributions["denominator_ratio"]["min"]
        bound = normal / MARGIN
        worst = collapsing.get("denominator_ratio_max")
        if worst is not None and bound <= worst < normal:
            bound = (normal + worst) / 2
        bounds["denominator_ratio_min"] = bound
    if "ppl_ratio" in distributions:
        bounds["ppl_max_ratio"] = max(defaults.ppl_max_ratio, 1 + MARGIN * (distributions["ppl_ratio"]["max"] - 1))
    return bounds


def calibrate(mue, editor, cases, baseline, *, mined: dict[str, Any] | None = None, seed: int = 0,
              cases_source: str = "", progress: Callable[[dict[str, Any]], None] | None = None,
              done: dict[str, dict[str, Any]] | None = None) -> Calibration:
    """Edit each of `cases` (normal ones) with `editor` on `mue`, restoring after each, and build
    the calibration: per-case rows, the metrics' distributions, the bounds by BOUND_RULE. `done`
    holds rows of cases measured before (an interrupted calibration resumed): they are not edited
    again, nor passed to `progress`."""
    rows = []
    for case in cases:
        if done and case.case_id in done:
            rows.append(done[case.case_id])
            continue
        result = check(mue, editor, case, baseline)
        r = result.to_json()
        row = {"case_id": case.case_id, "text": case.text, "ppl": r["ppl"],
               "ppl_ratio": r["ppl"] / baseline.ppl.ppl if r["ppl"] is not None else None,
               **{k: r.get(k) for k in METRICS if k != "ppl_ratio"}, "efficacy": r["efficacy"]}
        rows.append(row)
        if progress is not None:
            progress(row)
    finite = {k: [row[k] for row in rows if row[k] is not None and math.isfinite(row[k])] for k in METRICS}
    distributions = {k: _distribution(v) for k, v in finite.items() if v}
    if not distributions:
        raise CalibrationError(f"calibrate {mue.name}: no case gave a finite measurement")
    collapsing = _collapsing_extremes(mined, editor.name, COLLAPSE_PPL)
    doc = {
        "schema": CALIBRATION_SCHEMA,
        "model": mue.name, "fingerprint": mue.fingerprint, "editor": editor.name,
        "hparams": editor_hparams(editor, mue),
        "n_cases": len(rows), "seed": seed, "cases_source": cases_source,
        "date": datetime.date.today().isoformat(), "editguard_version": versions().get("editguard", "unknown"),
        "ppl_corpus": baseline.corpus, "ppl_bos": baseline.ppl_bos, "baseline_ppl": baseline.ppl.ppl,
        "efficacy": sum(bool(row["efficacy"]) for row in rows) / len(rows),
        "distributions": distributions, "collapsing": collapsing,
        "rule": BOUND_RULE, "bounds": derive_bounds(distributions, collapsing),
        "cases": rows,
    }
    # The bounds it stores are checked as a calibration file's are when read back.
    return checked_calibration(doc, f"calibration of {mue.name} with {editor.name}")


# --- storage --------------------------------------------------------------------------------

def cache_path(fingerprint: str, editor: str) -> Path:
    """Keyed by the weights (their fingerprint), not the model's name: the same weights under a
    registered name, a directory or a Hub id share the calibration."""
    return cache_dir() / "calibration" / f"{fingerprint}-{safe_name(editor)}.json"


def shipped_name(model: str, editor: str) -> str:
    """The file name of a calibration in the suites' calibration/ folder."""
    return f"{safe_name(model)}-{safe_name(editor)}.json"


def store(calibration: Calibration) -> Path:
    """Write `calibration` into the cache (atomic, checksummed); returns the path."""
    d = calibration.doc
    path = cache_path(d["fingerprint"], d["editor"])
    with locked(path):
        write_entry(path, json.dumps(d, indent=1).encode())
    return path


def write_copy(calibration: Calibration, path: Path) -> None:
    """A copy for the repository (suites/calibration/, next to the mined lists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration.doc, indent=1) + "\n")


def checked_calibration(doc: Any, where: str) -> Calibration:
    """`doc` as a Calibration, its fields present and every bound checked as its command-line
    option is (a finite number in the option's range); CalibrationError naming `where` (the file),
    the key, the value (bounded) and what was expected."""
    if not isinstance(doc, dict):
        raise CalibrationError(f"calibration file {where}: expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in ("model", "fingerprint", "editor", "n_cases", "date", "editguard_version", "bounds")
               if k not in doc]
    if missing or not isinstance(doc.get("bounds"), dict):
        raise CalibrationError(f"calibration file {where}: missing fields {missing or ['bounds (a mapping)']}")
    unknown = sorted(set(doc["bounds"]) - set(GATED_BOUNDS))
    if unknown:
        raise CalibrationError(f"calibration file {where}: unknown bounds {bounded(unknown)}; "
                               f"known: {list(GATED_BOUNDS)}")
    for key, value in doc["bounds"].items():
        option = OPTIONS_BY_NAME[BOUND_OPTIONS[key]]
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {bounded(value)}")
            option.parse(value)
        except ValueError as err:
            raise CalibrationError(f"calibration file {where}: bounds.{key} (the bound of {option.cli_flag}): "
                                   f"{err}") from None
    for key in ("model", "fingerprint", "editor"):
        if not isinstance(doc[key], str):
            raise CalibrationError(f"calibration file {where}: {key}: expected a string, got {bounded(doc[key])}")
    return Calibration(doc)


def read_calibration(path: Path) -> Calibration:
    try:
        doc = parse_config_text(Path(path).read_bytes(), "json")
    except (OSError, ValueError) as err:
        raise CalibrationError(f"calibration file {path}: cannot read it: {err}") from None
    return checked_calibration(doc, str(path))


def find_calibration(model: str, fingerprint: str, editor: str) -> Calibration | None:
    """The calibration of this model (same fingerprint) that serves `editor` (its own, else for a
    ROME variant ROME's: CALIBRATION_SERVES): the cache's, else the one `editguard prepare` made
    for these weights (under any name), else the project's or shipped suites/calibration/ file.
    Every one is checked as the options are (checked_calibration)."""
    for name in served_by(editor):
        path = cache_path(fingerprint, name)
        with locked(path):
            data = read_entry(path)
        if data is not None:
            try:
                doc = parse_config_text(data, "json")
            except ValueError as err:
                raise CalibrationError(f"calibration file {path}: cannot read it: {err}") from None
            return _for(checked_calibration(doc, str(path)), name, path)
        prepared = prepared_file(fingerprint, f"calibration-{safe_name(name)}.json", "calibrate")
        if prepared is not None:
            calibration = _for(read_calibration(prepared), name, prepared)
            if calibration.doc["fingerprint"] == fingerprint:
                return calibration
        shipped = find_suite_file("calibration", shipped_name(model, name))
        if shipped is not None:
            calibration = _for(read_calibration(shipped), name, shipped)
            if calibration.doc["fingerprint"] == fingerprint:
                return calibration
    return None


def _for(calibration: Calibration, editor: str, path: Path) -> Calibration:
    """`calibration`, refused when the file found under `editor`'s name was made with another editor."""
    made_with = calibration.doc["editor"]
    if made_with != editor:
        raise CalibrationError(f"calibration file {path}: made with editor {bounded(made_with)}, but its name says "
                               f"{editor}; rename or remake it (editguard calibrate --editor {editor})")
    return calibration


def calibrated_thresholds(base: Thresholds, calibration: Calibration | None, explicit: dict[str, float]) -> Thresholds:
    """`base` with the calibration's bounds, then the explicitly given options on top (they win)."""
    bounds = calibration.bounds if calibration is not None else {}
    return replace(base, **{**bounds, **explicit})


def calibration_note(model: str, calibration: Calibration | None, hparams_given: bool = False,
                     editor: str = DEFAULT_EDITOR, unserved: Calibration | None = None) -> tuple[str, str]:
    """(the report header's sentence on which bounds gate `editor` on `model` and why, a warning or '').
    A calibration is made with the editor's default hyperparameters: with others (hparams_given)
    the defaults serve. `unserved`: a calibration of this model made with an editor that does not
    serve `editor` (CALIBRATION_SERVES), named in the warning."""
    if calibration is not None:
        return calibration.describe(editor), ""
    note = f"uncalibrated defaults — run `editguard calibrate --model {model}`"
    if editor != DEFAULT_EDITOR:
        note = f"uncalibrated defaults — run `editguard calibrate --model {model} --editor {editor}`"
    if hparams_given:
        note = "uncalibrated defaults — calibrations hold for the editor's default hyperparameters, not --hparams"
    warnings_ = []
    if model != CALIBRATION_MODEL:
        warnings_.append(f"the gate defaults were calibrated on {CALIBRATION_MODEL}, not on {model}; "
                         f"normal edits may fail the update-norm gate. Run `editguard calibrate --model {model}"
                         f"{'' if editor == DEFAULT_EDITOR else ' --editor ' + editor}` "
                         f"(or set --editguard-update-norm-max)")
    if not serves(DEFAULT_EDITOR, editor):
        made = (f"the calibration of {model} was made with {unserved.doc['editor']}" if unserved is not None
                else f"the gate defaults were calibrated with {DEFAULT_EDITOR}")
        warnings_.append(f"{made}, and a {DEFAULT_EDITOR} calibration serves "
                         f"{', '.join(CALIBRATION_SERVES[DEFAULT_EDITOR])} only: {editor} is gated by the "
                         f"uncalibrated defaults, which may not fit its edits")
        note += f" (a {DEFAULT_EDITOR} calibration does not serve {editor})"
    warning = "editguard: " + "; ".join(warnings_) if warnings_ else ""
    return note, warning
