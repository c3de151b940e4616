"""The snapshot/restore that keeps the model fixture pristine: bit-for-bit restores, loud failed
restores, checksums, undeclared changes caught, and every built-in editor restored exactly."""

import pytest
import torch

from editguard import check, get_editor, load_model, measure_baseline
from editguard.editors.api import EditReport
from editguard.models import RestoreError, WeightSnapshot, parameter_checksums
from tests.tiny_edits import CASES, FAST, PARIS, changed_parameters, copy_parameters

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def test_snapshot_restores_bit_for_bit():
    mue = load_model("tiny-gpt2")
    name = mue.family.rewrite_weight(1)
    original = mue.parameter(name).detach().clone()
    snapshot = WeightSnapshot(mue.model, [name])
    with torch.no_grad():
        mue.parameter(name).add_(1e-7)
    assert snapshot.changed() == [name]
    snapshot.restore()
    assert torch.equal(mue.parameter(name), original) and snapshot.changed() == []


def test_failed_restore_is_loud():
    mue = load_model("tiny-gptj")
    name = mue.family.rewrite_weight(1)
    original = mue.parameter(name).detach().clone()
    snapshot = WeightSnapshot(mue.model, [name])
    snapshot._saved[name][0, 0] = float("nan")  # NaN != NaN: the copy can never compare equal
    try:
        with pytest.raises(RestoreError, match="did not give back the saved weights bit for bit"):
            snapshot.restore()
    finally:
        with torch.no_grad():
            mue.parameter(name).copy_(original)


def test_checksums_see_a_one_element_change():
    mue = load_model("tiny-llama")
    before = parameter_checksums(mue.model)
    name = mue.family.rewrite_weight(0)
    with torch.no_grad():
        mue.parameter(name)[3, 3] += 0.5
    try:
        after = parameter_checksums(mue.model)
        assert [n for n in before if before[n] != after[n]] == [name]
    finally:
        with torch.no_grad():
            mue.parameter(name)[3, 3] -= 0.5


class SneakyEditor:
    """Declares one matrix but changes the final norm too."""

    name = "sneaky"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        norm = model.parameter(f"{model.family.final_norm}.weight")
        with torch.no_grad():
            norm.mul_(1.5)
        return EditReport(touched=self.touched_parameters(model, cases))


def test_undeclared_changes_are_caught(data_dir):
    from editguard.data import load_ppl_corpus

    mue = load_model("tiny-llama")
    baseline = measure_baseline(mue, load_ppl_corpus("me-ppl-50", data_dir)[:5])
    name = f"{mue.family.final_norm}.weight"
    original = mue.parameter(name).detach().clone()
    try:
        with pytest.raises(RestoreError,
                           match=f"\\['{name}'\\] still differ.*'sneaky' changed weights it did not list"):
            check(mue, SneakyEditor(), PARIS, baseline)
    finally:
        with torch.no_grad():
            mue.parameter(name).copy_(original)


@pytest.mark.parametrize("name", ["rome", "c-rome", "r-rome", "ft", "memit", "alphaedit"])
def test_snapshot_restores_every_editor_exactly(tiny, name, data_dir):
    editor = get_editor(name, FAST[name], data_dir=data_dir)
    cases = CASES if name in ("ft", "memit", "alphaedit") else [PARIS]
    before = copy_parameters(tiny)
    touched = editor.touched_parameters(tiny, cases)
    snapshot = WeightSnapshot(tiny.model, touched)
    try:
        report = editor.apply(tiny, cases)
        assert report.touched == touched
        assert changed_parameters(tiny, before) == sorted(touched), "the editor changed what it did not declare"
    finally:
        snapshot.restore()
    assert changed_parameters(tiny, before) == []
    if hasattr(editor, "reset"):
        editor.reset()
