"""The snapshot/restore that keeps the model fixture pristine: bit-for-bit restores, loud failed
restores, digests of every weight, undeclared changes caught and undone, and every built-in editor restored exactly."""

import pytest
import torch

from editguard import check, get_editor, load_model, measure_baseline
from editguard.models import RestoreError, WeightSnapshot, weight_digests
from editguard.models.loading import original_parameters
from tests.tiny_edits import CASES, FAST, PARIS, changed_parameters, copy_parameters
from tests.toy_editors import (
    FAULTY_EDITORS,
    BufferEditor,
    OffsettingEditor,
    PermutingEditor,
    ReplacingEditor,
    ScaleRowEditor,
    UndeclaredEditor,
)

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


def test_digests_see_a_one_element_change():
    mue = load_model("tiny-llama")
    before = weight_digests(mue.model)
    name = mue.family.rewrite_weight(0)
    original = mue.parameter(name).detach().clone()  # x + 0.5 - 0.5 need not give x back
    with torch.no_grad():
        mue.parameter(name)[3, 3] += 0.5
    try:
        after = weight_digests(mue.model)
        assert [n for n in before if before[n] != after[n]] == [name]
    finally:
        with torch.no_grad():
            mue.parameter(name).copy_(original)


def test_digests_cover_floating_buffers():
    mue = load_model("tiny-llama")
    assert "model.rotary_emb.inv_freq" in weight_digests(mue.model)


@pytest.fixture
def tiny_llama_baseline(data_dir):
    from editguard.data import load_ppl_corpus

    mue = load_model("tiny-llama")
    return mue, measure_baseline(mue, load_ppl_corpus("me-ppl-50", data_dir)[:5])


FAULTS = {  # editor -> what the failure names
    UndeclaredEditor: r"changed parameters \['model.norm.weight'\] that it did not list",
    PermutingEditor: r"changed parameters \['model.layers.0.mlp.down_proj.weight'\] that it did not list",
    OffsettingEditor: r"changed parameters \['model.norm.weight'\] that it did not list",
    BufferEditor: r"changed buffers \['model.rotary_emb.inv_freq'\]",
    ReplacingEditor: r"replaced the Parameter object model.layers.1.mlp.down_proj.weight",
}


@pytest.mark.parametrize("editor_class", FAULTY_EDITORS, ids=lambda c: c.name)
def test_every_undeclared_change_is_named_and_undone(tiny_llama_baseline, editor_class):
    """Permutations, offsetting changes (written through .data), buffers and a replaced Parameter
    all escape float sums; the digests catch each, the model is put back in place (the same
    objects), and the next check runs on the unedited model."""
    mue, baseline = tiny_llama_baseline
    objects = dict(mue.model.named_parameters())
    with pytest.raises(RestoreError, match=FAULTS[editor_class] + ".*put back.*verified"):
        check(mue, editor_class(), PARIS, baseline)
    assert weight_digests(mue.model) == baseline.pristine.digests
    assert all(p is objects[n] for n, p in mue.model.named_parameters())
    assert check(mue, ScaleRowEditor({"factor": 1.01}), PARIS, baseline).editor == "scale-row"


def test_replacing_is_not_reported_as_an_undeclared_change(tiny_llama_baseline):
    mue, baseline = tiny_llama_baseline
    with pytest.raises(RestoreError) as failure:
        check(mue, ReplacingEditor(), PARIS, baseline)
    assert "did not list" not in str(failure.value)


def test_original_parameters_are_re_read_from_a_checkpoint_directory(tmp_path):
    """A model loaded from a directory is put back from its safetensors, one tensor at a time."""
    tiny = load_model("tiny-gpt2")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    mue = load_model(str(tmp_path))
    names = [mue.family.rewrite_weight(0), f"{mue.family.final_norm}.weight"]
    read = original_parameters(mue, names)
    assert all(torch.equal(read[n], mue.parameter(n)) for n in names)


@pytest.mark.parametrize("name", ["rome", "memit"])
def test_snapshot_restores_exactly_on_every_family(tiny_family, name, data_dir):
    """Every known family's tiny model: an edit changes exactly what it declared, and the restore
    undoes it bit for bit (OPT's blocks flatten the batch; Gemma's tokenizer adds a BOS)."""
    test_snapshot_restores_every_editor_exactly(tiny_family, name, data_dir)


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
