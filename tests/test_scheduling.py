"""The xdist scheduler: a sequence's steps go to one worker, in order; other tests spread."""

import json
from pathlib import Path

import jsonschema
import pytest

from pytest_editguard.scheduling import step_id, work_unit

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "editguard" / "run" / "report.schema.json"


def test_a_sequence_step_belongs_to_its_module_and_other_tests_stand_alone():
    step = f"suites/sequential/test_hard_sequence.py::test_edit[{step_id(3, 't3-Windows')}]"
    assert work_unit(step) == "suites/sequential/test_hard_sequence.py"
    assert work_unit("suites/hardcf/test_hardcf.py::test_edit[2192-rococo]") == (
        "suites/hardcf/test_hardcf.py::test_edit[2192-rococo]")


PLAIN_TESTS = '''
import json, os, pytest

def _log(name):
    with open("log.jsonl", "a") as f:
        f.write(json.dumps([name, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")

@pytest.mark.parametrize("i", range(6), ids=[f"step{i:02d}-c{i}" for i in range(1, 7)])
def test_sequence(i):
    _log(f"step{i}")

@pytest.mark.parametrize("i", range(8))
def test_other(i):
    import time
    time.sleep(0.2)
    _log(f"other{i}")
'''


def test_xdist_keeps_steps_on_one_worker_in_order_and_spreads_the_rest(pytester):
    pytester.makepyfile(test_mixed=PLAIN_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=14)
    rows = [json.loads(line) for line in (pytester.path / "log.jsonl").read_text().splitlines()]
    steps = [(name, worker) for name, worker in rows if name.startswith("step")]
    assert [name for name, _ in steps] == [f"step{i}" for i in range(6)]
    assert len({worker for _, worker in steps}) == 1
    assert len({worker for name, worker in rows if name.startswith("other")}) == 2


def test_step_ids_are_padded_to_the_sequence_length():
    assert step_id(7, "c7") == "step07-c7" and step_id(7, "c7", 100) == "step007-c7"
    assert step_id(100, "c", 100) == "step100-c" and step_id(1000, "c", 1000) == "step1000-c"
    ids = [step_id(i, "c", 105) for i in range(1, 106)]
    assert sorted(ids) == ids   # text order is step order
    module = "suites/sequential/test_hard_sequence.py"
    assert work_unit(f"{module}::t[{ids[-1]}]") == module


LONG_SEQUENCE = '''
import json, os, pytest
from pytest_editguard.scheduling import step_id

def _log(name):
    with open("log.jsonl", "a") as f:
        f.write(json.dumps([name, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")

@pytest.mark.parametrize("i", range(1, 106), ids=[step_id(i, f"c{i}", 105) for i in range(1, 106)])
def test_sequence(i):
    _log(f"step{i}")

@pytest.mark.parametrize("i", range(6))
def test_other(i):
    import time
    time.sleep(0.3)
    _log(f"other{i}")
'''


def test_xdist_keeps_a_105_step_sequence_on_one_worker_in_order(pytester):
    pytester.makepyfile(test_long=LONG_SEQUENCE)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=111)
    rows = [json.loads(line) for line in (pytester.path / "log.jsonl").read_text().splitlines()]
    steps = [(name, worker) for name, worker in rows if name.startswith("step")]
    assert [name for name, _ in steps] == [f"step{i}" for i in range(1, 106)]
    assert len({worker for _, worker in steps}) == 1


# --- a worker that dies --------------------------------------------------------------------------

def test_a_dead_workers_test_is_not_run_again_and_its_finished_units_are_not_queued_again():
    from pytest_editguard.scheduling import after_worker_loss

    workload = {"a.py::t[1]": {"a.py::t[1]": True}, "a.py::t[2]": {"a.py::t[2]": False},
                "a.py::t[3]": {"a.py::t[3]": False}}
    crashed, requeue, dropped = after_worker_loss(workload)
    # The finished unit is not queued again (xdist queues it, and the worker that gets it waits forever).
    assert crashed == "a.py::t[2]" and requeue == {"a.py::t[3]": {"a.py::t[3]": False}} and dropped == []
    assert after_worker_loss({"a.py::t[1]": {"a.py::t[1]": True}}) == (None, {}, [])
    # --dist loadfile: one unit per file; the rest of the file goes back to the queue.
    crashed, requeue, dropped = after_worker_loss({"a.py": {"a.py::t[1]": True, "a.py::t[2]": False,
                                                            "a.py::t[3]": False}})
    assert crashed == "a.py::t[2]" and requeue == {"a.py": {"a.py::t[3]": False}} and dropped == []


def test_a_dead_workers_sequence_is_not_continued_elsewhere():
    from pytest_editguard.scheduling import after_worker_loss

    seq = "s.py"
    steps = [f"{seq}::t[{step_id(i, f'c{i}')}]" for i in (1, 2, 3, 4)]
    workload = {seq: {steps[0]: True, steps[1]: False, steps[2]: False, steps[3]: False},
                "b.py::t[x]": {"b.py::t[x]": False}}
    crashed, requeue, dropped = after_worker_loss(workload)
    # Steps 3 and 4 would build on edits that died with the worker: not run, and said so.
    assert crashed == steps[1] and dropped == steps[2:] and requeue == {"b.py::t[x]": {"b.py::t[x]": False}}


def test_a_dead_workers_exit_code_or_signal_is_named():
    import signal
    import subprocess
    import sys
    from types import SimpleNamespace

    from pytest_editguard.results import worker_exit

    def node(code: str):
        popen = subprocess.Popen([sys.executable, "-c", code])
        return SimpleNamespace(gateway=SimpleNamespace(id="gw0", _io=SimpleNamespace(popen=popen)))

    assert worker_exit(node("import os; os._exit(3)")) == "exit code 3"
    assert worker_exit(node(f"import os; os.kill(os.getpid(), {int(signal.SIGKILL)})")) == "signal SIGKILL"
    alive = node("import time; time.sleep(30)")
    try:
        assert worker_exit(alive) == "unknown"
    finally:
        alive.gateway._io.popen.kill()
        alive.gateway._io.popen.wait()
    assert worker_exit(SimpleNamespace(gateway=SimpleNamespace(id="gw1"))) == "unknown"   # a remote worker


def test_a_case_whose_worker_died_before_its_set_up_report_is_named_by_its_test_id():
    from types import SimpleNamespace

    from pytest_editguard.results import worker_death_record

    settings = SimpleNamespace(editor="rome", model="tiny-llama")
    record = worker_death_record("s/test_x.py::test_edit[t3-Windows]", None, settings,
                                 "worker gw0 died (signal SIGKILL)")
    assert (record["case_id"], record["suite_module"], record["passed"]) == ("t3-Windows", "s/test_x.py", False)
    assert record["error"] == {"type": "WorkerDied", "message": "WorkerDied: worker gw0 died (signal SIGKILL)",
                               "phase": "worker"}


KILLER_SUITE = '''
from editguard.cases import EditCase

CASES = [
    EditCase("t1", "{} is the capital of", "Paris", "Rome", "France"),
    EditCase("t2", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditCase("t3", "{} is produced by", "Windows", "Apple", "Microsoft"),
    EditCase("t4", "{} plays the", "Miles Davis", "violin", "trumpet"),
]

def edit_cases(settings):
    from editguard.suites import CaseList
    return CaseList(CASES, "four hand-written cases")

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''

KILLER_EDITOR = '''
import os, signal
import torch
from editguard.editors.api import EditReport

class KillsItsWorker:
    """Edits gently (row 0 x 1.01), except on case t3, where it ends its own process."""
    name = "kills-its-worker"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        if cases[0].case_id == "t3":
            how = os.environ["KILLER_HOW"]
            if how == "SIGKILL":
                os.kill(os.getpid(), signal.SIGKILL)   # as the OOM killer does
            os._exit(int(how))
        with torch.no_grad():
            model.rewrite_matrix(model.edit_layer)[0] *= 1.01
        return EditReport(touched=self.touched_parameters(model, cases))
'''


@pytest.mark.parametrize("dist, how, exit_", [("load", "3", "exit code 3"), ("loadfile", "SIGKILL", "signal SIGKILL")])
def test_a_worker_that_dies_ends_the_run_and_the_report_names_its_case(pytester, data_dir, monkeypatch,
                                                                        dist, how, exit_):
    """tiny-llama, -n 2: the editor kills its worker on case t3 of 4. The run ends (it hung under the
    default scheduler), t3 is an error record naming the worker and how it died, the three other
    cases are measured (on the live worker or the fresh one), and the report is incomplete."""
    import time

    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    monkeypatch.setenv("KILLER_HOW", how)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makepyfile(test_suite=KILLER_SUITE, killer_editor=KILLER_EDITOR)
    pytester.syspathinsert()
    start = time.monotonic()
    result = pytester.runpytest_subprocess("-n", "2", "--dist", dist, "--model=tiny-llama",
                                           "--editor=killer_editor:KillsItsWorker", "--ppl-corpus=me-ppl-50",
                                           "--editguard-json=out/r.json", "-p", "no:cacheprovider", timeout=150)
    seconds = time.monotonic() - start
    assert seconds < 120, f"the run took {seconds:.0f} s"
    assert result.ret == 1, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines([f"*worker gw* died ({exit_}) while running test_suite.py::test_edit[[]t3-Windows[]]*"])
    doc = json.loads((pytester.path / "out" / "r.json").read_text())
    assert doc["complete"] is False
    by_id = {c["case_id"]: c for c in doc["cases"]}
    assert sorted(by_id) == ["t1", "t2", "t3", "t4"]
    dead = by_id["t3"]
    assert dead["verdict"] == "error" and dead["error"]["phase"] == "worker"
    assert dead["error"]["type"] == "WorkerDied" and exit_ in dead["error"]["message"]
    assert dead["subject"] == "Windows" and dead["target_new"] == "Apple"
    assert all(by_id[c]["verdict"] != "error" and by_id[c]["ppl"] is not None for c in ("t1", "t2", "t4"))
    [death] = doc["workers_died"]
    assert death["case"] == "test_suite.py::test_edit[t3-Windows]" and death["exit"] == exit_
    assert death["not_run"] == [] and doc["cases_not_run"] == []
    jsonschema.validate(doc, json.loads(SCHEMA_FILE.read_text()))


KILLER_SEQUENCE = KILLER_SUITE.replace("def edit_cases", "EDITGUARD_SEQUENTIAL = True\n\ndef edit_cases")


def test_a_worker_that_dies_in_a_sequence_leaves_its_later_steps_not_run(pytester, data_dir, monkeypatch):
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    monkeypatch.setenv("KILLER_HOW", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makepyfile(test_seq=KILLER_SEQUENCE, killer_editor=KILLER_EDITOR)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess("-n", "2", "--model=tiny-llama", "--editor=killer_editor:KillsItsWorker",
                                           "--ppl-corpus=me-ppl-50", "--editguard-json=r.json",
                                           "-p", "no:cacheprovider", timeout=150)
    assert result.ret == 1, result.stdout.str()[-3000:]
    doc = json.loads((pytester.path / "r.json").read_text())
    steps = {c["step"]: c for c in doc["cases"]}
    assert sorted(steps) == [1, 2, 3]
    assert steps[3]["verdict"] == "error" and steps[3]["sequence"] == "seq" and steps[3]["case_id"] == "t3"
    [death] = doc["workers_died"]
    assert death["not_run"] == doc["cases_not_run"] == [f"test_seq.py::test_edit[{step_id(4, 't4-Miles_Davis')}]"]
    assert doc["complete"] is False
