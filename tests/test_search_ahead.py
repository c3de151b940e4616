"""ROME told the next single edits' cases (editors.value.SearchAhead): their v* are searched in one
batch with the current case's, used only on the model they were searched on, and equal to their
searches alone; the guard tells copies of the cases that fit, and the plugin's runs tell them."""

import copy
import dataclasses

import pytest
import torch

from editguard import EditCase, get_editor, load_model
from editguard.editors.api import EditReport
from editguard.models import WeightSnapshot
from tests.tiny_edits import CASES, FAST_V, PARIS, SENTENCES

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")

# v_lr 0.005: small steps, so a batched search and a search alone take the same steps (see
# tests/test_rome.py's whole-search comparison).
EXACT_V = {**FAST_V, "v_lr": 0.005}


def apply_restored(editor, mue, case) -> EditReport:
    snapshot = WeightSnapshot(mue.model, editor.touched_parameters(mue, [case]))
    try:
        return editor.apply(mue, [case])
    finally:
        snapshot.restore()


def test_next_cases_are_searched_with_the_first_and_equal_their_searches_alone(tiny):
    ahead, alone = get_editor("rome", EXACT_V), get_editor("rome", EXACT_V)
    ahead.upcoming(CASES[1:])
    reports = [apply_restored(ahead, tiny, CASES[0])]
    for i, case in enumerate(CASES[1:], 1):
        ahead.upcoming(CASES[i + 1 :])
        reports.append(apply_restored(ahead, tiny, case))
    ids = ", ".join(c.case_id for c in CASES[1:])
    assert [r.diagnostics["v_star_search"] for r in reports] == [
        f"with {ids}", *[f"ahead, during {CASES[0].case_id}"] * (len(CASES) - 1)]
    for case, report in zip(CASES, reports):
        one = apply_restored(alone, tiny, case)
        assert one.diagnostics["v_star_search"] == "alone"
        assert report.diagnostics["v_steps"] == one.diagnostics["v_steps"], case.case_id
        assert torch.allclose(report.vectors["v_star"], one.vectors["v_star"], rtol=1e-4, atol=1e-5), case.case_id
        assert torch.allclose(report.vectors["delta_w"], one.vectors["delta_w"], rtol=1e-4, atol=1e-5), case.case_id


def _weights_changed(mue):
    """A weight far from the edit (the final norm's, or the last parameter's) moved by 1e-3."""
    name, parameter = list(mue.model.named_parameters())[-1]
    saved = parameter.detach().clone()
    with torch.no_grad():
        parameter.add_(1e-3)
    return lambda: parameter.data.copy_(saved)


def _hook_added(mue):
    """A forward hook that changes no output: the model's state differs, its values do not."""
    handle = mue.module(mue.family.layer.format(0)).register_forward_hook(lambda *_: None)
    return handle.remove


@pytest.mark.parametrize("change", [_weights_changed, _hook_added], ids=["weights", "hook"])
def test_v_star_found_ahead_is_searched_again_on_a_changed_model(tiny_llama, change):
    editor, alone = get_editor("rome", EXACT_V), get_editor("rome", EXACT_V)
    editor.upcoming(CASES[1:])
    assert apply_restored(editor, tiny_llama, CASES[0]).diagnostics["v_star_search"].startswith("with")
    undo = change(tiny_llama)
    try:
        again = apply_restored(editor, tiny_llama, CASES[1])
        expected = apply_restored(alone, tiny_llama, CASES[1])
    finally:
        undo()
    assert again.diagnostics["v_star_search"] == "alone"
    assert torch.allclose(again.vectors["v_star"], expected.vectors["v_star"], rtol=1e-5, atol=1e-6)
    # What was found ahead was dropped with it: the next case is searched again too.
    assert apply_restored(editor, tiny_llama, CASES[2]).diagnostics["v_star_search"] == "alone"


def test_v_star_found_ahead_is_not_used_on_another_model():
    gpt2, llama = load_model("tiny-gpt2"), load_model("tiny-llama")
    editor = get_editor("rome", EXACT_V)
    editor.upcoming([CASES[1]])
    apply_restored(editor, gpt2, CASES[0])
    report = apply_restored(editor, llama, CASES[1])
    assert report.diagnostics["v_star_search"] == "alone"
    expected = apply_restored(get_editor("rome", EXACT_V), llama, CASES[1])
    assert torch.allclose(report.vectors["v_star"], expected.vectors["v_star"], rtol=1e-5, atol=1e-6)


def test_a_batch_that_fails_is_searched_again_for_the_case_alone(tiny_llama):
    """A malformed later case breaks the batch: the current case's edit is made alone, and the
    error comes at the malformed case's own turn, as its own."""
    broken = copy.copy(CASES[1])
    object.__setattr__(broken, "prompt", "a prompt without a place for the subject")
    editor = get_editor("rome", EXACT_V)
    editor.upcoming([broken, CASES[2]])
    report = apply_restored(editor, tiny_llama, PARIS)
    assert report.diagnostics["v_star_search"] == "alone"
    expected = apply_restored(get_editor("rome", EXACT_V), tiny_llama, PARIS)
    assert torch.allclose(report.vectors["v_star"], expected.vectors["v_star"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        apply_restored(editor, tiny_llama, broken)


class RecordsUpcoming:
    """Edits nothing; keeps what it is told of the next cases, and rewrites them."""

    name = "records-upcoming"

    def __init__(self):
        self.told: list[list[EditCase]] = []

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def upcoming(self, cases):
        self.told.append(list(cases))
        for case in cases:   # an untrusted editor reaching for cases it has not been given yet
            object.__setattr__(case, "target_new", "rewritten")

    def apply(self, model, cases):
        return EditReport(touched=self.touched_parameters(model, cases))


def test_guard_tells_copies_of_the_next_cases_that_fit():
    from editguard.guard import UPCOMING_CASES, check, measure_baseline
    from editguard.tokens import MAX_EDIT_TOKENS

    mue = load_model("tiny-llama")
    baseline = measure_baseline(mue, SENTENCES)
    too_long = EditCase("long", "{} " + "is a word " * MAX_EDIT_TOKENS, "Paris", "Rome")
    later = [dataclasses.replace(PARIS, case_id=f"n{i}", subject=f"City {i}") for i in range(UPCOMING_CASES + 2)]
    upcoming = [CASES[1], too_long, *later]
    kept = [vars(c).copy() for c in upcoming]
    editor = RecordsUpcoming()
    check(mue, editor, PARIS, baseline, upcoming=upcoming)
    told = editor.told[0]
    # The first UPCOMING_CASES, less the one an edit would refuse; as they are, but not the same objects.
    assert [c.case_id for c in told] == [c.case_id for c in upcoming[:UPCOMING_CASES] if c is not too_long]
    assert all(c.target_new == "rewritten" for c in told)
    assert [vars(c) for c in upcoming] == kept
    check(mue, editor, PARIS, baseline)
    assert len(editor.told) == 1   # nothing upcoming: the editor is not called
