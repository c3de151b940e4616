"""The one record schema (editguard.run.records): its JSON Schema file, reports without bare NaN,
typed reading, error records and what derives from the field table."""

import json
import math
from pathlib import Path

import jsonschema
import pytest

from editguard.cases import EditCase
from editguard.errors import EditguardError, ReportError
from editguard.report.compare import METRICS as COMPARE_METRICS
from editguard.report.compare import CompareError, compare_runs
from editguard.report.json_report import load_report, write_report
from editguard.report.markdown import render_markdown
from editguard.report.verdicts import ERROR, summarise, verdict
from editguard.run.records import (
    METRICS,
    CaseRecord,
    error_record,
    finite_json,
    json_schema,
    junit_properties,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "editguard" / "run" / "report.schema.json"
RUN = {"model": "m", "editor": "e", "thresholds": {"ppl_max": 1000.0, "ppl_max_ratio": 2.0}, "ppl_corpus": "c",
       "baseline_ppl": 10.0, "baseline_corpus_ppl": 9.0}
CASE = EditCase("c1", "{} is the capital of", "Paris", "Rome", "France")


def record(case_id="c1", passed=True, ppl=11.0, **extra):
    base = CaseRecord(case_id=case_id, subject="Paris", prompt="{} is the capital of", target_new="Rome",
                      target_true="France", editor="e", model="m", passed=passed,
                      failed_gates=[] if passed else ["perplexity"], reason="", ppl=ppl, ppl_probed=True,
                      corpus_ppl=ppl, ppl_baseline=10.0, denominator_ratio=0.9, key_cosine=0.8,
                      update_norm_rel=0.1, blast_radius=0.01, efficacy=True, seconds=1.0, timings={}, sequence=None,
                      step=None, peak_memory_mb=None, diagnostics={"denominator": 2.0}).to_json()
    return {**base, **extra}


def test_the_shipped_schema_file_is_the_generated_one():
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), \
        "regenerate it: python -m editguard.run.records > editguard/run/report.schema.json"


def _is_report(path: Path) -> bool:
    doc = json.loads(path.read_text())
    return isinstance(doc, dict) and {"run", "cases"} <= doc.keys()


REPORTS = sorted(p for p in (ROOT / "bench" / "results").rglob("*.json") if _is_report(p))


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_report_in_bench_results_validates_against_the_schema(path):
    jsonschema.validate(json.loads(path.read_text()), json.loads(SCHEMA_FILE.read_text()))
    assert load_report(path)["cases"]


def test_reports_in_bench_results_were_found():
    assert len(REPORTS) >= 10


def _strict_json(text):
    """A parser that, like JavaScript's JSON.parse, has no NaN or Infinity."""
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_nan_is_written_as_null_with_a_flag_and_read_back_as_a_collapse(tmp_path):
    path = write_report(tmp_path / "r.json", RUN, [record(ppl=math.nan, diagnostics={"denominator": math.inf}),
                                                  record("c2", ppl=12.0)])
    doc = _strict_json(path.read_text())
    nan_case = next(c for c in doc["cases"] if c["case_id"] == "c1")
    assert nan_case["ppl"] is None and nan_case["non_finite"] == {"ppl": "nan", "corpus_ppl": "nan",
                                                                  "diagnostics.denominator": "inf"}
    assert nan_case["verdict"] == "collapsed"
    jsonschema.validate(doc, json.loads(SCHEMA_FILE.read_text()))
    loaded = load_report(path)
    back = next(c for c in loaded["cases"] if c["case_id"] == "c1")
    assert math.isnan(back["ppl"]) and back["diagnostics"]["denominator"] == math.inf
    assert verdict(back, 1000.0) == "collapsed"


@pytest.mark.parametrize("field, value, message", [
    ("passed", "false", "field 'passed' is 'false'; expected true or false"),
    ("ppl", "12", "field 'ppl' is '12'; expected a number or null"),
    ("failed_gates", "perplexity", "field 'failed_gates' is 'perplexity'; expected a list"),
])
def test_a_record_of_the_wrong_type_is_refused_naming_case_and_field(tmp_path, field, value, message):
    doc = {"run": RUN, "cases": [record(), {**record("c2"), field: value}]}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ReportError) as err:
        load_report(tmp_path / "r.json")
    assert "case 1 (case 'c2')" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("run, message", [
    ({"model": "m", "editor": "e"}, "no gate thresholds"),
    ({**RUN, "thresholds": {"ppl_max": "1000"}}, "run.thresholds.ppl_max is '1000'; expected a finite number"),
    ({**RUN, "thresholds": {"ppl_max": 1000, "ppl_max_ratio": None}}, "run.thresholds.ppl_max_ratio is None"),
])
def test_a_report_without_numeric_thresholds_is_refused(tmp_path, run, message):
    (tmp_path / "r.json").write_text(json.dumps({"run": run, "cases": [record()]}))
    with pytest.raises(ReportError, match=message):
        load_report(tmp_path / "r.json")


def test_an_error_record_is_counted_shown_and_a_regression():
    err = error_record(CASE, "e", "m", RuntimeError("boom\nsecond line"), "edit").to_json()
    assert err["error"] == {"type": "RuntimeError", "message": "RuntimeError: boom second line", "phase": "edit"}
    assert err["passed"] is False and verdict(err, 1000.0) == ERROR
    assert summarise(RUN, [record("c0"), err])["error"] == 1
    markdown = render_markdown(RUN, [record("c0"), err])
    assert markdown.startswith("## ❌") and "error in edit: RuntimeError: boom second line" in markdown
    saved = {"run": RUN, "cases": [record("c1")], "complete": True}
    comparison = compare_runs(saved, {"run": RUN, "cases": [err]}, name="saved.json")
    assert comparison.failed and "error now" in comparison.regressions[0].text
    assert ("editguard.error", "edit: RuntimeError: boom second line") in junit_properties(err)


def test_compare_refuses_an_incomplete_report_and_duplicate_cases():
    current = {"run": RUN, "cases": [record()]}
    with pytest.raises(CompareError, match="incomplete run"):
        compare_runs({"run": RUN, "cases": [record()], "complete": False}, current, name="saved.json")
    with pytest.raises(CompareError, match=r"1 of its cases appear more than once \(case c1 \(Paris\) ×2\)"):
        compare_runs({"run": RUN, "cases": [record(), record(passed=False)]}, current, name="saved.json")


def test_junit_compare_and_tables_derive_from_the_field_table():
    names = {m.name for m in METRICS}
    assert set(COMPARE_METRICS) == {m.name for m in METRICS if m.comparable} and set(COMPARE_METRICS) < names
    props = dict(junit_properties(record()))
    assert {f"editguard.{m.name}" for m in METRICS if m.junit and record().get(m.name) is not None} <= set(props)
    assert props["editguard.denominator"] == "2.0"


def test_errors_of_the_records_are_editguard_errors():
    assert issubclass(ReportError, EditguardError)


def test_finite_json_keeps_an_earlier_flag():
    once = finite_json(record(ppl=math.inf))
    assert finite_json(once)["non_finite"] == once["non_finite"] == {"ppl": "inf", "corpus_ppl": "inf"}
