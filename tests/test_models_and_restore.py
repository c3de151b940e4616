"""Model registry and loading, and the snapshot/restore that keeps the model fixture pristine."""

import pytest
import torch

from editguard import EditCase, check, load_model, measure_baseline
from editguard.editors.api import EditReport
from editguard.models import FAMILIES, ModelLoadError, RestoreError, WeightSnapshot, parameter_checksums
from editguard.models.registry import family_for_model_type
from editguard.models.tiny import build_tiny_model

FAMILY_OF = {"tiny-gpt2": "gpt2", "tiny-gptj": "gptj", "tiny-llama": "llama"}
PARIS = EditCase("t1", "{} is the capital of", "Paris", "Rome", "France")


@pytest.mark.parametrize("name", FAMILY_OF)
def test_family_templates_name_real_modules(name):
    mue = load_model(name)
    assert mue.family.name == FAMILY_OF[name]
    for template in (mue.family.layer, mue.family.mlp, mue.family.rewrite):
        assert isinstance(mue.module(template.format(mue.edit_layer)), torch.nn.Module)
    mue.module(mue.family.final_norm), mue.module(mue.family.lm_head)
    hidden = mue.model.config.hidden_size
    out_dim, in_dim = mue.rewrite_matrix(mue.edit_layer).shape
    assert out_dim == hidden and in_dim > hidden  # (out, in) whatever the storage (GPT-2 Conv1D is transposed)


def test_tiny_models_are_seeded():
    a, b = build_tiny_model("llama"), build_tiny_model("llama")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(ValueError, match="'mamba'.*supported model_type values: gpt2, gptj, llama"):
        family_for_model_type("mamba")
    assert set(FAMILIES) == {"gpt2", "gptj", "llama"}


def test_missing_big_model_says_how_to_provide_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="(?s)never downloads weights.*--model=/path/to/a/local/model/dir"):
        load_model("nobody/does-not-exist-editguard")
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model("./no/such/model/dir")


def test_bad_device_dtype_and_layer_are_specific_errors():
    with pytest.raises(ValueError, match="--dtype must be one of float32, bfloat16, float16; got 'fp8'"):
        load_model("tiny-llama", dtype="fp8")
    with pytest.raises(ValueError, match="edit layer 9 is outside model tiny-llama's layers 0..3"):
        load_model("tiny-llama", edit_layer=9)


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
        with pytest.raises(RestoreError, match=f"\\['{name}'\\] still differ.*'sneaky' changed weights it did not list"):
            check(mue, SneakyEditor(), PARIS, baseline)
    finally:
        with torch.no_grad():
            mue.parameter(name).copy_(original)
