"""The recorder: a journal and an atomically rewritten report as cases arrive, recovery from the
journal, outputs proven writable before the run."""

import json
import os

import pytest

from editguard.errors import ReportError, UsageError
from editguard.report.json_report import load_report
from editguard.run.recorder import Outputs, Recorder, journal_path, prove_writable, recover_report
from tests.test_records import RUN, record


def header(module="suites/x/test_x.py"):
    return {**RUN, "suites": {module: {"suite": "x", "ppl_corpus": "c", "baseline_ppl": 10.0,
                                       "baseline_corpus_ppl": 9.0}}}


def fallback():
    return {"model": "m", "editor": "e", "thresholds": {"ppl_max": 1000.0}}


def test_each_case_is_journaled_and_the_report_rewritten_as_incomplete_until_finish(tmp_path):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"run": RUN, "cases": [record("old")], "complete": True}))   # the previous run's
    recorder = Recorder(Outputs(json=str(out), markdown=str(tmp_path / "r.md")), fallback)
    recorder.start()
    assert json.loads(out.read_text())["complete"] is False and json.loads(out.read_text())["cases"] == []
    recorder.add_case({**record("c1"), "suite_module": "suites/x/test_x.py"}, header())
    recorder.add_case({**record("c2", ppl=float("nan")), "suite_module": "suites/x/test_x.py"}, header())
    doc = json.loads(out.read_text())
    assert doc["complete"] is False and [c["case_id"] for c in doc["cases"]] == ["c1", "c2"]
    lines = [json.loads(line) for line in journal_path(out).read_text().splitlines()]
    assert [entry["kind"] for entry in lines] == ["start", "case", "case"]
    assert "header" in lines[1] and "header" not in lines[2]     # a module's header is journaled once
    outcome = recorder.finish({"complete": True})
    doc = load_report(out)
    assert doc["complete"] is True and len(doc["cases"]) == 2 and not outcome.comparison_failed
    assert (tmp_path / "r.md").read_text().startswith("## ❌")


def test_a_killed_run_is_recovered_from_its_journal_marked_incomplete(tmp_path):
    out = tmp_path / "r.json"
    recorder = Recorder(Outputs(json=str(out)), fallback)
    recorder.add_case({**record("c1"), "suite_module": "m.py"}, header("m.py"))
    recorder.add_case({**record("c2", ppl=float("inf"), passed=False), "suite_module": "m.py"}, header("m.py"))
    journal = journal_path(out)
    with open(journal, "a") as f:
        f.write('{"kind": "case", "record": {"case_id": "c3", "pa')   # torn by kill -9
    out.unlink()
    path = recover_report(journal)
    assert path == out
    doc = load_report(out)
    assert doc["complete"] is False and doc["recovered_from"] == str(journal)
    assert [c["case_id"] for c in doc["cases"]] == ["c1", "c2"] and doc["cases"][1]["verdict"] == "collapsed"


def test_recovery_refuses_a_damaged_journal_and_one_without_cases(tmp_path):
    journal = tmp_path / "r.json.journal.jsonl"
    journal.write_text('{"kind": "start"}\nnot json\n{"kind": "end"}\n')
    with pytest.raises(ReportError, match="r.json.journal.jsonl:2: not a journal line"):
        recover_report(journal)
    journal.write_text('{"kind": "start"}\n')
    with pytest.raises(ReportError, match="holds no finished case"):
        recover_report(journal)
    with pytest.raises(ReportError, match="cannot read the journal"):
        recover_report(tmp_path / "missing.jsonl")


def test_outputs_are_proven_writable_by_creating_them(tmp_path):
    Outputs(json=str(tmp_path / "a" / "r.json"), plots=str(tmp_path / "p")).prepare()
    assert os.listdir(tmp_path) == []                                   # tried, and nothing left behind
    with pytest.raises(UsageError, match="--editguard-json /proc/x/r.json: cannot create /proc/x/r.json"):
        prove_writable("--editguard-json", "/proc/x/r.json")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="file is not a directory"):
        prove_writable("--editguard-markdown", tmp_path / "file" / "r.md")
    with pytest.raises(UsageError, match="exists and is a directory"):
        prove_writable("--editguard-json", tmp_path)


def test_an_existing_report_is_not_clobbered_by_the_check(tmp_path):
    saved = tmp_path / "saved.json"
    saved.write_text("keep me")
    prove_writable("--editguard-json", saved)
    assert saved.read_text() == "keep me"


def test_the_cli_recovers_a_journal_and_refuses_to_judge_an_incomplete_run(tmp_path, capsys):
    from editguard.cli import main

    out = tmp_path / "r.json"
    recorder = Recorder(Outputs(json=str(out)), fallback)
    recorder.add_case({**record("c1"), "suite_module": "m.py"}, header("m.py"))
    out.unlink()                                        # killed before any report survived
    assert main(["report", str(journal_path(out)), "--recover", "--out", str(tmp_path / "back.json")]) == 1
    printed = capsys.readouterr().out
    assert f"recovered {tmp_path / 'back.json'}" in printed and "INCOMPLETE run: 1 cases reported" in printed
    assert load_report(tmp_path / "back.json")["complete"] is False
    complete = tmp_path / "complete.json"
    complete.write_text(json.dumps({"run": header("m.py"), "cases": [record("c1")], "complete": True}))
    assert main(["compare", str(complete), str(tmp_path / "back.json")]) == 2
    assert "back.json: it is an incomplete run" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "back.json"), str(complete)]) == 2
    assert main(["report", str(complete)]) == 0
