"""The xdist scheduler: a sequence's steps go to one worker, in order; other tests spread."""

import json

from pytest_editguard.scheduling import step_id, work_unit


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
