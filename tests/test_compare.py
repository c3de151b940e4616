"""The no-regression gate (editguard.report.compare), its fail margins, `editguard compare`, the
Markdown summary and the run header's invocation, on synthetic JSON reports."""

import copy
import json
import subprocess

import pytest

from editguard.cli import main
from editguard.report.compare import CompareError, FailMargin, compare_runs, parse_fail_margins
from editguard.report.json_report import RunInfo, git_commit, invocation, write_report
from editguard.report.markdown import render_markdown


def _case(case_id, ppl=20.0, passed=True, **fields):
    return {"case_id": case_id, "subject": f"S{case_id}", "prompt": "{} is in", "target_new": "Rome", "ppl": ppl,
            "ppl_baseline": 10.0, "passed": passed, "failed_gates": [] if passed else ["perplexity_ratio"],
            "update_norm_rel": 0.1, "denominator_ratio": 1.0, "efficacy": True, **fields}


def _report(cases, editor="c-rome", model="m", suite="hardcf", **run_fields):
    run = {"model": model, "model_fingerprint": "f", "editor": editor, "dtype": "float32", "ppl_bos": "never",
           "thresholds": {"ppl_max": 1000.0, "ppl_max_ratio": 2.0}, "suite": suite, "ppl_corpus": "me-ppl-50",
           "baseline_ppl": 10.0, "suites": {f"suites/{suite}/test_{suite}.py": {"suite": suite,
                                                                                "ppl_corpus": "me-ppl-50"}},
           **run_fields}
    return {"schema": 1, "run": run, "cases": cases}


SAVED = _report([_case("1"), _case("2"), _case("3", ppl=5000.0, passed=False), _case("4", passed=False)])


def test_a_case_that_passed_there_and_fails_now_is_a_regression_named_in_the_lines():
    now = _report([_case("1"), _case("2", ppl=3000.0, passed=False, failed_gates=["perplexity"]),
                   _case("3", ppl=5000.0, passed=False), _case("4", passed=False)], editor="rome")
    comparison = compare_runs(SAVED, now, name="base.json")
    assert comparison.failed and comparison.compared == 4
    assert [c.case for c in comparison.regressions] == ["case 2 (S2)"]
    lines = comparison.lines()
    assert "REGRESSION case 2 (S2): passed in base.json, collapsed now (perplexity)" in lines
    assert lines[0].startswith("compared with base.json (c-rome on m): 4 cases compared; 1 regressions")
    assert lines[-1] == ("editguard compare: FAILED: 1 regressions, 0 worsened beyond a margin against base.json")
    # A case failing in both is no regression, even if its verdict got worse: shown apart.
    now["cases"][3] = _case("4", ppl=4000.0, passed=False)
    assert [c.case for c in compare_runs(SAVED, now).worse_verdicts] == ["case 4 (S4)"]
    assert [c.case for c in compare_runs(SAVED, now).regressions] == ["case 2 (S2)"]


def test_the_same_run_passes_and_improvements_never_fail():
    assert not compare_runs(SAVED, copy.deepcopy(SAVED), parse_fail_margins("ppl:0%,efficacy")).failed
    better = _report([_case("1", ppl=10.0), _case("2"), _case("3", ppl=12.0), _case("4")])
    comparison = compare_runs(SAVED, better, parse_fail_margins("ppl:10%"), name="base.json")
    assert not comparison.failed and not comparison.regressions and not comparison.worsenings
    texts = [f"{c.case}: {c.text}" for c in comparison.improvements]
    assert "case 3 (S3): collapsed in base.json, passed now" in texts
    assert "case 4 (S4): failed gate in base.json, passed now" in texts
    assert "case 1 (S1): ppl 20 → 10 (-50.0%), better by more than ppl:10%" in texts
    assert comparison.lines()[-1] == "editguard compare: no regression against base.json"


@pytest.mark.parametrize("spec, before, after, worse", [
    ("ppl:10%", 20.0, 22.5, True), ("ppl:10%", 20.0, 21.5, False), ("ppl:1", 20.0, 21.5, True),
    ("ppl:2", 20.0, 21.5, False), ("ppl:10%", 20.0, float("nan"), True), ("ppl:10%", 20.0, float("inf"), True),
    ("update-norm-rel:0.05", 0.1, 0.2, True), ("update_norm_rel:100%", 0.1, 0.19, False),
    # Lower is worse for the denominator ratio and the key cosine.
    ("denominator_ratio:10%", 1.0, 0.5, True), ("denominator_ratio:10%", 1.0, 1.5, False),
    ("key_cosine:0.1", 0.9, 0.7, True), ("efficacy", True, False, True), ("efficacy", False, True, False),
])
def test_margins_fail_a_worsening_beyond_them_only(spec, before, after, worse):
    field = parse_fail_margins(spec)[0].metric
    comparison = compare_runs(_report([_case("1", **{field: before})]), _report([_case("1", **{field: after})]),
                              parse_fail_margins(spec))
    assert comparison.failed is worse
    assert [c.metric for c in comparison.worsenings] == ([field] if worse else [])


def test_a_change_of_many_times_reads_as_a_factor():
    comparison = compare_runs(_report([_case("1")]), _report([_case("1", ppl=5000.0)]), parse_fail_margins("ppl:10%"))
    assert comparison.worsenings[0].text == "ppl 20 → 5000 (×250), beyond the margin ppl:10%"


def test_a_field_missing_on_one_side_is_not_judged():
    saved = _report([_case("1", denominator_ratio=None)])   # an editor without ROME's anatomy
    assert not compare_runs(saved, _report([_case("1", denominator_ratio=0.0)]),
                            parse_fail_margins("denominator_ratio:0")).failed


def test_margin_specs_parse_in_every_accepted_form():
    assert parse_fail_margins("ppl:10%") == [FailMargin("ppl", 0.1, True)]
    assert parse_fail_margins(["ppl:10%, update-norm-rel:0.05", "efficacy"]) == [
        FailMargin("ppl", 0.1, True), FailMargin("update_norm_rel", 0.05, False), FailMargin("efficacy")]
    assert [str(m) for m in parse_fail_margins("ppl:12.5%,blast_radius:3,efficacy")] == [
        "ppl:12.5%", "blast_radius:3", "efficacy"]
    assert parse_fail_margins(None) == [] and parse_fail_margins("") == []


@pytest.mark.parametrize("spec, message", [
    ("pp:10%", "fail margin 'pp:10%': unknown field 'pp'; one of ppl, corpus_ppl, denominator_ratio, key_cosine, "
             "update_norm_rel"),
    ("ppl", "fail margin 'ppl': expected FIELD:VALUE, e.g. ppl:10% (relative to the saved value) or ppl:0.5"),
    ("ppl:ten%", "fail margin 'ppl:ten%': the margin must be a finite number ≥ 0, optionally with %"),
    ("ppl:-5%", "got '-5%'"), ("ppl:nan", "got 'nan'"), ("ppl:", "got ''"),
    ("efficacy:5%", "fail margin 'efficacy:5%': efficacy is yes/no, give it without a value"),
])
def test_bad_margin_specs_say_what_was_expected(spec, message):
    with pytest.raises(CompareError) as err:
        parse_fail_margins(spec)
    assert message in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"model": "other"}, "cannot compare with base.json: it was run on model 'm', this run on 'other'"),
    ({"model_fingerprint": "g"}, "model 'm' has other weights there (fingerprint f vs g here)"),
    ({"suite": "hardedit", "suites": {"suites/hardedit/test_hardedit.py": {"suite": "hardedit"}}},
     "it ran suite hardcf, this run hardedit; compare runs of the same suite"),
    ({"suites": {"suites/hardcf/test_hardcf.py": {"suite": "hardcf", "ppl_corpus": "me-ppl-1k"}}},
     "suite hardcf measured perplexity on me-ppl-50 there and on me-ppl-1k here"),
    ({"ppl_bos": "always"}, "BOS rule 'never', this run 'always'"),
])
def test_runs_of_another_model_or_suite_are_refused(change, message):
    now = copy.deepcopy(SAVED)
    now["run"].update(change)
    with pytest.raises(CompareError) as err:
        compare_runs(SAVED, now, name="base.json")
    assert message in str(err.value)


def test_other_gates_or_dtype_are_noted_and_cases_on_one_side_listed_not_judged():
    now = _report([_case("1"), _case("5", passed=False)], dtype="bfloat16", model_fingerprint="other-dtype",
                  thresholds={"ppl_max": 500.0, "ppl_max_ratio": 2.0})
    comparison = compare_runs(SAVED, now, name="base.json")
    assert not comparison.failed and comparison.compared == 1
    assert comparison.only_in_baseline == ["case 2 (S2)", "case 3 (S3)", "case 4 (S4)"]
    assert comparison.only_in_run == ["case 5 (S5)"]
    lines = comparison.lines()
    assert "only in this run (not compared): 1 cases: case 5 (S5)" in lines
    assert any(line.startswith("note: the gates differ (ppl_max=1000, ppl_max_ratio=2 there, ppl_max=500")
               for line in lines)
    assert "note: dtype float32 there, bfloat16 here" in lines


def test_cli_compare_gates_with_the_same_logic_and_keeps_the_equality_check(tmp_path, capsys):
    saved, now = tmp_path / "saved.json", tmp_path / "now.json"
    write_report(saved, SAVED["run"], SAVED["cases"])
    worse = copy.deepcopy(SAVED)
    worse["cases"][0]["ppl"] = 25.0
    write_report(now, worse["run"], worse["cases"])
    assert main(["compare", str(saved), str(now)]) == 0                        # no verdict changed
    assert main(["compare", str(saved), str(now), "--compare-fail", "ppl:10%"]) == 1
    assert "WORSE beyond margin case 1 (S1): ppl 20 → 25 (+25.0%), beyond the margin ppl:10%" in capsys.readouterr().out
    assert main(["compare", str(saved), str(now), "--compare-fail", "ppl:30%", "--compare-fail", "efficacy"]) == 0
    assert main(["compare", str(saved), str(now), "--equal"]) == 1             # the old check: numbers differ
    assert main(["compare", str(saved), str(saved), "--equal", "--rtol", "0"]) == 0
    capsys.readouterr()
    assert main(["compare", str(saved), str(now), "--compare-fail", "ppl:lots"]) == 2
    assert "fail margin 'ppl:lots'" in capsys.readouterr().err
    assert main(["compare", str(saved), str(now), "--rtol", "0.1"]) == 2
    assert "--rtol is the tolerance of --equal" in capsys.readouterr().err
    other = tmp_path / "other.json"
    write_report(other, {**SAVED["run"], "model": "other"}, SAVED["cases"])
    assert main(["compare", str(saved), str(other)]) == 2
    assert "it was run on model 'm', this run on 'other'" in capsys.readouterr().err


def test_markdown_summary_has_header_counts_worst_cases_and_regressions(tmp_path):
    now = _report([_case("1", ppl=12.0), _case("2", ppl=3000.0, passed=False, failed_gates=["perplexity"]),
                   _case("3", ppl=float("nan"), passed=False), _case("4", ppl=25.0, passed=False)], editor="rome")
    text = render_markdown(now["run"], now["cases"], compare_runs(SAVED, now, name="base.json"))
    assert text.startswith("## ❌ editguard: rome on m (hardcf)\n")
    assert "`ppl_max=1000`, `ppl_max_ratio=2`" in text
    assert "| 4 | 1 | 1 | 2 |" in text                        # cases, passed, failed a gate, collapsed
    rows = [line for line in text.splitlines() if line.startswith("| ") and "is in" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 3", "| 2", "| 4", "| 1"]   # NaN first, then by ppl
    assert "### Compared with `base.json` (c-rome)" in text
    assert "- case 2 (S2): passed in base.json, collapsed now (perplexity)" in text
    assert "| S1 is in |" in text
    passing = _report([_case("1")])
    assert render_markdown(passing["run"], passing["cases"]).startswith("## ✅ editguard")


def test_every_report_header_carries_its_invocation(tmp_path, monkeypatch):
    info = invocation(["pytest", "suites/hardcf"], cwd=str(tmp_path))
    assert info["argv"] == ["pytest", "suites/hardcf"] and info["cwd"] == str(tmp_path)
    assert info["git"] is None                                  # not a repository: no failure
    assert info["started_utc"].endswith("+00:00") and info["started_utc"][:2] == "20"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    for args in (["add", "f"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_commit(tmp_path) == {"commit": head.strip(), "dirty": False}
    (tmp_path / "f").write_text("y")
    assert git_commit(tmp_path)["dirty"] is True
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))         # no git at all: no failure either
    assert git_commit(tmp_path) is None
    run = RunInfo(model="m", editor="e", hparams={}, thresholds={"ppl_max": 1000.0}, baseline_ppl=1.0,
                  baseline_corpus_ppl=1.0, ppl_corpus="c", model_fingerprint="f", device="cpu", dtype="float32",
                  invocation=invocation())
    header = json.loads(json.dumps(run.to_json()))
    assert set(header["invocation"]) == {"argv", "cwd", "git", "started_utc"}
    assert header["versions"]["editguard"]
