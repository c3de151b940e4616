"""No change leaks from one test to the next: a plugin run on tiny-llama that alternates the faulty
editors of tests/toy_editors.py (undeclared parameter, permutation, offsetting write through .data,
buffer, replaced Parameter) and tests/faulty_editors.py (hooks, patched code, attributes, modes, the
tokenizer, dtypes, replaced modules, ...) with a cheap honest one; every faulty test fails naming the change, and
every test after it sees the unedited model's bytes and Parameter objects."""

import os

LEAK_SUITE = '''
import pytest
from editguard.cases import EditCase
from editguard.guard import check
from editguard.models.snapshot import RestoreError, weight_digests
from tests.faulty_editors import STATE_FAULTY_EDITORS
from tests.toy_editors import FAULTY_EDITORS, ScaleRowEditor

EVERY_FAULT = FAULTY_EDITORS + STATE_FAULTY_EDITORS

CASE = EditCase("c", "{} is the capital of", "Paris", "Rome", "France")
PRISTINE = {}


@pytest.mark.parametrize("i", range(N_TESTS))
def test_no_leak(i, model_under_edit, baseline):
    if not PRISTINE:
        PRISTINE.update(objects=dict(model_under_edit.model.named_parameters()))
    assert weight_digests(model_under_edit.model) == baseline.pristine.digests
    assert all(p is PRISTINE["objects"][n] for n, p in model_under_edit.model.named_parameters())
    if i % 2:
        check(model_under_edit, ScaleRowEditor({"factor": 1.01}), CASE, baseline)
    else:
        with pytest.raises(RestoreError, match="put back"):
            check(model_under_edit, EVERY_FAULT[i // 2 % len(EVERY_FAULT)](), CASE, baseline)
'''


def test_a_long_run_with_faulty_editors_leaks_no_change(pytester, data_dir, monkeypatch, toy_importable):
    n_tests = int(os.environ.get("EDITGUARD_LEAK_TESTS", "44"))  # each faulty editor once; 1000 by hand (docs)
    monkeypatch.setenv("EDITGUARD_DATA", str(data_dir))
    pytester.makepyfile(test_leak_suite=LEAK_SUITE.replace("N_TESTS", str(n_tests)))
    pytester.makefile(".txt", corpus="The cat sat on the mat.\nRivers flow into the sea.\n")  # cheap probes
    result = pytester.runpytest_subprocess("--model=tiny-llama", "--ppl-corpus=corpus.txt", "-p", "no:cacheprovider",
                                           "-q", "--durations=2")
    result.assert_outcomes(passed=n_tests)
