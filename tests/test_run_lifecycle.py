"""Nothing lost, nothing misreported: a case that errors is a record, the report is journaled and
rewritten as cases finish (SIGTERM and kill -9 keep what finished), --collect-only writes nothing,
and a saved report that cannot be compared is refused before any edit.

Through pytester subprocesses on the tiny model, with editors that do nothing but misbehave (no
v* search): each run takes seconds."""

import json
import signal

import pytest

from editguard.report.json_report import load_report
from editguard.run.recorder import journal_path, recover_report
from tests.test_plugin import SUITE, suite  # noqa: F401  (the fixture)

EDITORS = '''
import os
import signal

from editguard.editors.api import EditReport


class Quiet:
    """Declares the edited matrix and leaves it alone: every gate holds."""
    name = "quiet"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        if any(c.case_id == "t2" for c in cases):
            self.misbehave()
        return EditReport(touched=self.touched_parameters(model, cases))

    def misbehave(self):
        pass


class RaisesOnT2(Quiet):
    name = "raises-on-t2"

    def misbehave(self):
        raise RuntimeError("the editor broke on t2")


class TermOnT2(Quiet):
    name = "term-on-t2"

    def misbehave(self):
        os.kill(os.getpid(), signal.SIGTERM)   # a CI cancel while t2 edits


class KillOnT2(Quiet):
    name = "kill-on-t2"

    def misbehave(self):
        os.kill(os.getpid(), signal.SIGKILL)


class BrokenSetup(Quiet):
    name = "broken-setup"

    def hparams(self, model):
        raise ValueError("this editor cannot be set up")
'''


def args(editor, *extra):
    return ["--model=tiny-llama", f"--editor=editors:{editor}", "--ppl-corpus=me-ppl-50", "-p", "no:cacheprovider",
            *extra]


@pytest.fixture
def runs(suite):  # noqa: F811
    suite.makepyfile(editors=EDITORS)
    return suite


def ids(doc):
    return [c["case_id"] for c in doc["cases"]]


def test_a_case_whose_editor_raises_is_an_error_record_everywhere_and_a_regression(runs):
    saved = runs.runpytest_subprocess(*args("Quiet", "--editguard-json=saved.json"))
    saved.assert_outcomes(passed=3)
    result = runs.runpytest_subprocess(*args("RaisesOnT2", "--editguard-json=r.json", "--editguard-markdown=r.md",
                                             "--junitxml=j.xml", "--editguard-compare=saved.json"))
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == 1
    out = " ".join(result.stdout.str().split())
    assert "2 passed, 1 failed" in out and "1 errors (the edit or a probe raised)" in out
    assert "error in edit:" in out    # the table cell (the rest wraps)
    result.stdout.fnmatch_lines(["REGRESSION case t2 (Danielle Darrieux): passed in saved.json, error now*"])
    doc = load_report(runs.path / "r.json")
    assert ids(doc) == ["t1", "t2", "t3"] and doc["complete"] is True and doc["summary"]["error"] == 1
    error = doc["cases"][1]
    assert error["verdict"] == "error" and error["passed"] is False
    assert error["error"] == {"type": "RuntimeError", "message": "RuntimeError: the editor broke on t2",
                              "phase": "edit"}
    assert doc["comparison"]["failed"] and len(doc["comparison"]["regressions"]) == 1
    assert "❌ error in edit: RuntimeError: the editor broke on t2" in (runs.path / "r.md").read_text()
    assert 'name="editguard.error" value="edit: RuntimeError: the editor broke on t2"' in \
        (runs.path / "j.xml").read_text()


def test_when_every_case_errors_at_setup_the_report_still_holds_every_case(runs):
    result = runs.runpytest_subprocess(*args("BrokenSetup", "--editguard-json=r.json"))
    result.assert_outcomes(errors=3)
    doc = load_report(runs.path / "r.json")
    assert ids(doc) == ["t1", "t2", "t3"] and doc["summary"]["error"] == 3
    assert {c["error"]["phase"] for c in doc["cases"]} == {"setup"}
    assert "this editor cannot be set up" in doc["cases"][0]["error"]["message"]
    assert doc["run"]["editor"] == "editors:BrokenSetup" and doc["run"]["thresholds"]["ppl_max"] == 1000


def test_sigterm_ends_the_run_with_every_finished_case_and_complete_false(runs):
    result = runs.runpytest_subprocess(*args("TermOnT2", "--editguard-json=out/r.json"))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    doc = load_report(runs.path / "out" / "r.json")
    assert doc["complete"] is False and ids(doc) == ["t1"]
    assert "test_suite.py::test_edit[t3-Windows]" in doc["cases_not_run"]


def test_kill_9_leaves_the_finished_cases_and_a_journal_that_recovers_them(runs):
    (runs.path / "r.json").write_text(json.dumps({"run": {}, "cases": [], "complete": True}))   # an older run's
    result = runs.runpytest_subprocess(*args("KillOnT2", "--editguard-json=r.json"))
    assert result.ret == -signal.SIGKILL
    doc = load_report(runs.path / "r.json")   # rewritten after t1, atomically: never the older run's
    assert doc["complete"] is False and ids(doc) == ["t1"]
    (runs.path / "r.json").unlink()
    recovered = load_report(recover_report(journal_path(runs.path / "r.json")))
    assert recovered["complete"] is False and ids(recovered) == ["t1"] and recovered["run"]["model"] == "tiny-llama"


def test_collect_only_writes_nothing(runs):
    saved = runs.path / "saved.json"
    saved.write_text("a saved baseline")
    result = runs.runpytest_subprocess(*args("Quiet", "--collect-only", f"--editguard-json={saved}",
                                             "--editguard-markdown=out/s.md"))
    assert result.ret == 0
    assert saved.read_text() == "a saved baseline"
    assert not journal_path(saved).exists() and not (runs.path / "out").exists()


def test_duplicate_case_ids_are_refused_at_collection_naming_both(runs):
    runs.makepyfile(test_suite=SUITE.replace('EditCase("t3",', 'EditCase("t1",'))
    result = runs.runpytest_subprocess(*args("Quiet"))
    assert result.ret != 0 and "passed" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*its cases 0 ('Paris': '{} is the capital of') and 2 ('Windows': '{} is produced "
                                 "by') share the case id 't1'; give every case its own id*"])


@pytest.mark.parametrize("change, message", [
    (lambda doc: doc.update(complete=False), "it is an incomplete run"),
    (lambda doc: doc["cases"].append(dict(doc["cases"][0])), "1 of its cases appear more than once"),
    (lambda doc: doc["run"].pop("thresholds"), "its run header has no gate thresholds"),
    (lambda doc: doc["run"]["thresholds"].update(ppl_max="1000"), "run.thresholds.ppl_max is '1000'"),
    (lambda doc: doc["cases"][0].update(passed="false"), "field 'passed' is 'false'; expected true or false"),
])
def test_a_saved_report_that_cannot_be_compared_is_refused_before_any_edit(runs, change, message):
    runs.runpytest_subprocess(*args("Quiet", "--editguard-json=saved.json", "--max-cases=2"))
    doc = json.loads((runs.path / "saved.json").read_text())
    change(doc)
    (runs.path / "saved.json").write_text(json.dumps(doc))
    result = runs.runpytest_subprocess(*args("Quiet", "--editguard-compare=saved.json", "--editguard-json=r.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str(), result.stderr.str()
    assert not (runs.path / "r.json").exists()


def test_a_saved_report_of_other_weights_is_refused_before_any_edit(runs):
    runs.runpytest_subprocess(*args("Quiet", "--editguard-json=saved.json", "--max-cases=1"))
    doc = json.loads((runs.path / "saved.json").read_text())
    doc["run"]["model_fingerprint"] = "other-weights"
    (runs.path / "saved.json").write_text(json.dumps(doc))
    result = runs.runpytest_subprocess(*args("Quiet", "--editguard-compare=saved.json", "--editguard-json=r.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*--editguard-compare saved.json: model 'tiny-llama' has other weights there "
                                 "(fingerprint other-weights vs *"])
    assert load_report(runs.path / "r.json")["cases"] == []


def test_an_output_under_proc_is_refused_before_any_edit(runs):
    result = runs.runpytest_subprocess(*args("Quiet", "--editguard-json=/proc/x/r.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--editguard-json /proc/x/r.json: cannot create /proc/x/r.json*"])
