"""The editor under test cannot fool the gate: whatever a faulty editor leaves behind (a weight, a
hook, a patched forward, an attribute, train mode, the tokenizer, ModelUnderEdit's fields, a dtype,
a replaced module, the config, torch's modes, editguard's own code, the case) fails its case, and
afterwards the model equals a freshly loaded one in every respect, so the next, honest case
measures exactly what it measures on an untouched model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import editguard.guard
import editguard.metrics.perplexity
from editguard.cases import EditCase
from editguard.editors.registry import get_editor
from editguard.guard import EditSequence, SequenceStepError, check, measure_baseline
from editguard.models.loading import load_model
from editguard.models.snapshot import RestoreError
from editguard.models.state import ModelState
from editguard.restore import StateChanged
from tests.faulty_editors import STATE_FAULTY_EDITORS, EmbeddingEditor, EverythingEditor, PaddingSideEditor
from tests.tiny_edits import FAST
from tests.toy_editors import FAULTY_EDITORS

SENTENCES = ["The cat sat on the mat.", "Rivers flow into the sea.", "A small town lies by the river."]
PARIS = EditCase("u1", "{} is the capital of", "Paris", "Rome", "France")


def hook_dicts(module: torch.nn.Module) -> dict[str, int]:
    return {k: len(v) for k, v in vars(module).items() if "hook" in k and isinstance(v, dict) and v}


def plain_attributes(module: torch.nn.Module) -> dict:
    return {k: v for k, v in vars(module).items() if isinstance(v, (bool, int, float, str)) or callable(v)
            and not isinstance(v, torch.nn.Module)}


def differences(mue, fresh, classes: dict) -> list[str]:
    """Every respect in which `mue` differs from the freshly loaded `fresh` (values compared, not
    objects), plus torch's global hooks and modes and the code editguard's probes run through."""
    found = []
    mine, theirs = dict(mue.model.named_modules()), dict(fresh.model.named_modules())
    if {k: type(v) for k, v in mine.items()} != {k: type(v) for k, v in theirs.items()}:
        found.append("module tree")
    for path in theirs.keys() & mine.keys():
        a, b = mine[path], theirs[path]
        if hook_dicts(a) != hook_dicts(b):
            found.append(f"hooks of {path}: {hook_dicts(a)}")
        attrs_a, attrs_b = plain_attributes(a), plain_attributes(b)
        if attrs_a.keys() != attrs_b.keys() or any(not callable(v) and attrs_a[k] != v for k, v in attrs_b.items()):
            found.append(f"attributes of {path}")
    params_a, params_b = dict(mue.model.named_parameters()), dict(fresh.model.named_parameters())
    buffers_a, buffers_b = dict(mue.model.named_buffers()), dict(fresh.model.named_buffers())
    for kind, x, y in (("parameter", params_a, params_b), ("buffer", buffers_a, buffers_b)):
        if x.keys() != y.keys():
            found.append(f"{kind} names")
        for name in x.keys() & y.keys():
            s, t = x[name], y[name]
            if (s.dtype, s.device, s.shape, s.requires_grad, s.grad is None) != (t.dtype, t.device, t.shape,
                                                                                 t.requires_grad, t.grad is None):
                found.append(f"{kind} {name} metadata")
            elif not torch.equal(s, t):
                found.append(f"{kind} {name} values")
    if mue.model.config.to_dict() != fresh.model.config.to_dict():
        found.append("config")
    tok_a, tok_b = mue.tokenizer, fresh.tokenizer
    for attr in ("padding_side", "truncation_side", "pad_token", "bos_token", "eos_token", "model_max_length"):
        if getattr(tok_a, attr) != getattr(tok_b, attr):
            found.append(f"tokenizer {attr}")
    if len(tok_a) != len(tok_b) or tok_a._tokenizer.to_str() != tok_b._tokenizer.to_str():
        found.append("tokenizer vocabulary or backend")
    for field in ("name", "edit_layer", "dtype", "device", "fingerprint", "family"):
        if getattr(mue, field) != getattr(fresh, field):
            found.append(f"ModelUnderEdit.{field}")
    if any(d for name, d in vars(torch.nn.modules.module).items() if name.startswith("_global_")
           and name.endswith("hooks") and isinstance(d, dict)):
        found.append("torch's global module hooks")
    if not torch.is_grad_enabled():
        found.append("torch grad mode")
    if any(vars(cls).get("forward") is not forward for cls, forward in classes.items()):
        found.append("a module class's forward")
    if editguard.guard.perplexity is not editguard.metrics.perplexity.perplexity:
        found.append("editguard.guard.perplexity")
    return found


@pytest.fixture(scope="module")
def setting():
    """tiny-llama (the cached instance every test shares), its baseline, a freshly loaded copy to
    compare with, and the numbers an honest ROME edit gives on the untouched model."""
    mue = load_model("tiny-llama")
    baseline = measure_baseline(mue, SENTENCES)
    fresh = load_model.__wrapped__("tiny-llama")
    classes = {type(m): vars(type(m)).get("forward") for m in mue.model.modules()}
    assert differences(mue, fresh, classes) == []
    rome = get_editor("rome", FAST["rome"])
    reference = check(mue, rome, PARIS, baseline)
    return mue, baseline, fresh, classes, rome, reference


def assert_untouched_and_next_case_exact(setting):
    mue, baseline, fresh, classes, rome, reference = setting
    assert differences(mue, fresh, classes) == []
    after = check(mue, rome, PARIS, baseline)
    assert after.ppl == reference.ppl
    assert after.diagnostics["update_norm_rel"] == reference.diagnostics["update_norm_rel"]
    assert after.diagnostics.get("layer", mue.edit_layer) == reference.diagnostics.get("layer", mue.edit_layer)


@pytest.mark.parametrize("editor_class", FAULTY_EDITORS + STATE_FAULTY_EDITORS, ids=lambda c: c.name)
def test_a_faulty_editor_fails_and_the_model_equals_a_fresh_one(setting, editor_class):
    mue, baseline = setting[:2]
    with pytest.raises(RestoreError, match="put back") as failure:
        check(mue, editor_class(), dataclasses.replace(PARIS, case_id="faulty"), baseline)
    assert len(str(failure.value)) < 2000
    assert_untouched_and_next_case_exact(setting)


@pytest.mark.parametrize("editor_class", STATE_FAULTY_EDITORS, ids=lambda c: c.name)
def test_each_state_change_is_named_and_caught_before_any_probe(setting, editor_class, monkeypatch):
    """Caught right after apply(), before perplexity runs on what the editor left: a change that
    flatters the probes (a hook, a patched perplexity) never gets to."""
    mue, baseline = setting[:2]
    probed = []
    monkeypatch.setattr(editguard.guard, "perplexity", lambda *a, **k: probed.append(1))
    with pytest.raises(StateChanged, match="in apply\\(\\) changed what an edit must leave alone") as failure:
        check(mue, editor_class(), dataclasses.replace(PARIS, case_id="faulty"), baseline)
    assert probed == [] and failure.value.editguard_phase == "edit"
    monkeypatch.undo()
    assert_untouched_and_next_case_exact(setting)


NAMED = {  # editor -> words its failure must contain
    "forward-hook": "forward_hooks added on model.layers.1.mlp", "pre-hook": "forward_pre_hooks added on model.norm",
    "global-hook": "torch's global", "patched-forward": "attribute forward of model.layers.1.mlp",
    "patched-class": "code: transformers.models.llama.modeling_llama.LlamaMLP.forward",
    "norm-epsilon": "attribute variance_epsilon of model.norm: 1e-06 -> 0.5",
    "train-mode": "train mode of the model: False -> True", "padding-side": "tokenizer padding_side: 'right' -> 'left'",
    "added-token": "tokenizer", "edit-layer": "ModelUnderEdit.edit_layer: 1 -> 2",
    "dtype": "tensor model.layers.1.mlp.down_proj.weight: float32",
    "module-replacing": "submodule model.layers.1.mlp.down_proj",
    "config": "config rms_norm_eps", "requires-grad": "requires_grad=True, has a grad",
    "grad-mode": "torch mode grad enabled: True -> False", "patched-guard": "code: editguard.guard.perplexity",
    "case-rewriting": "case(s) faulty",
}


@pytest.mark.parametrize("editor_class", STATE_FAULTY_EDITORS, ids=lambda c: c.name)
def test_the_failure_names_the_change(setting, editor_class):
    mue, baseline = setting[:2]
    with pytest.raises(StateChanged) as failure:
        check(mue, editor_class(), dataclasses.replace(PARIS, case_id="faulty"), baseline)
    assert NAMED[editor_class.name] in str(failure.value)
    declared = "model.layers.1.mlp.down_proj.weight"
    assert f"['{declared}'] that it did not list" not in str(failure.value)   # dtype: its own matrix is declared


def test_a_poisoned_module_cache_is_caught(setting):
    """ModelUnderEdit.module() answers from a cache: an editor that plants another module there would
    redirect every later edit and probe."""
    from tests.toy_editors import FaultyEditor

    class CachePoisoner(FaultyEditor):
        name = "cache-poisoner"

        def sabotage(self, model):
            model._modules[model.family.rewrite.format(model.edit_layer)] = torch.nn.Linear(4, 4)

    mue, baseline = setting[:2]
    with pytest.raises(StateChanged, match="module cache no longer matches"):
        check(mue, CachePoisoner(), PARIS, baseline)
    assert_untouched_and_next_case_exact(setting)


def test_what_cannot_be_put_back_in_place_is_reloaded(setting, monkeypatch):
    mue, baseline = setting[:2]
    model_before = mue.model
    monkeypatch.setattr(ModelState, "put_back", lambda self, mue: [])   # as if putting back had no effect
    with pytest.raises(RestoreError, match="reloaded from its cached weights and verified"):
        check(mue, PaddingSideEditor(), PARIS, baseline)
    monkeypatch.undo()
    assert mue.model is not model_before
    assert_untouched_and_next_case_exact(setting)


def test_a_frozen_field_cannot_be_rebound_plainly(setting):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setting[0].edit_layer = 0


def test_a_faulty_step_of_a_sequence_fails_and_the_sequence_restores_everything(setting):
    from tests.faulty_editors import ForwardHookEditor

    mue, baseline = setting[:2]
    with EditSequence(mue, ForwardHookEditor(), baseline, on_error="continue") as sequence:
        with pytest.raises(SequenceStepError, match="forward_hooks added"):
            sequence.apply(PARIS)
        assert hook_dicts(mue.module("model.layers.1.mlp")) == {}
    assert_untouched_and_next_case_exact(setting)


@pytest.mark.parametrize("editor_class", [EmbeddingEditor, EverythingEditor], ids=lambda c: c.name)
def test_an_honest_editor_of_the_embedding_or_of_everything_is_measured(setting, editor_class):
    """The anatomy skips what it cannot measure (the embedding's inputs are token ids; a norm is not
    a matrix) with the reason in the record, and measures the rest."""
    mue, baseline = setting[:2]
    result = check(mue, editor_class(), PARIS, baseline)
    skipped = result.diagnostics["blast_radius_skipped"]
    assert skipped["model.embed_tokens.weight"] == "an embedding: its inputs are token ids, not vectors"
    if editor_class is EverythingEditor:
        assert skipped["model.norm.weight"] == "not a matrix (1-D)"
        assert result.diagnostics["touched_matrices"]["model.layers.1.mlp.down_proj.weight"]["blast_radius"] > 0
    assert result.record().to_json()["diagnostics"]["blast_radius_skipped"] == skipped
    assert_untouched_and_next_case_exact(setting)
