"""MEMIT on the tiny models: its layers per family, the closed-form solve, a batch edit, and the
first layer's update against the formula."""

import pytest
import torch

from editguard import get_editor, load_model
from editguard.editors.covariance import layer_second_moment
from editguard.editors.keys import context_templates, fill, keys_and_values
from editguard.editors.memit import block_outputs, default_layers, memit_solve
from editguard.models import WeightSnapshot
from tests.tiny_edits import CASES, FAST, PARIS, changed_parameters, copy_parameters

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def test_memit_layers_default_per_family_and_fit_small_models(tiny):
    assert default_layers(tiny) == (1, 2)  # 4 layers: half the model from the edit layer
    assert get_editor("memit").hparams(tiny)["layers"] == (1, 2)
    assert get_editor("alphaedit", {"layers": [0, 3]}).touched_parameters(tiny, [PARIS]) == [
        tiny.family.rewrite_weight(0), tiny.family.rewrite_weight(3)]
    with pytest.raises(ValueError,
                       match=r"MEMIT hyperparameter 'layers' must be within the model's layers 0\.\.3, got \(2, 7\)"):
        get_editor("memit", {"layers": [2, 7]}).touched_parameters(tiny, [PARIS])


def test_memit_family_layers_on_full_size_models():
    from types import SimpleNamespace

    from editguard.models import FAMILIES as ARCH

    def model(family, n_layers, edit_layer):
        return SimpleNamespace(family=ARCH[family], n_layers=n_layers, edit_layer=edit_layer)

    assert default_layers(model("llama", 32, 5)) == (4, 5, 6, 7, 8)     # Llama-2-7B
    assert default_layers(model("gpt2", 48, 17)) == (13, 14, 15, 16, 17)  # GPT-2 XL
    assert default_layers(model("gptj", 28, 5)) == (3, 4, 5, 6, 7, 8)    # GPT-J
    assert default_layers(model("gpt2", 12, 2)) == (2, 3, 4, 5, 6)       # GPT-2 small: 5 from the edit layer


def test_memit_solve_is_the_closed_form():
    g = torch.Generator().manual_seed(1)
    keys, residual = torch.randn(12, 3, generator=g), torch.randn(7, 3, generator=g)
    a = torch.randn(12, 12, generator=g)
    mom2 = a @ a.T / 12
    delta = memit_solve(residual, keys, mom2, 5.0)
    expected = residual @ keys.T @ torch.linalg.inv(5.0 * mom2 + keys @ keys.T)
    assert torch.allclose(delta, expected, atol=1e-4)
    assert torch.linalg.matrix_rank(delta) == 3


def test_memit_batch_edit(tiny, data_dir):
    editor = get_editor("memit", FAST["memit"], data_dir=data_dir)
    layers = editor.hparams(tiny)["layers"]
    before = copy_parameters(tiny)
    h_before = block_outputs(tiny, layers[-1], CASES)
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, CASES))
    try:
        report = editor.apply(tiny, CASES)
        assert changed_parameters(tiny, before) == sorted(tiny.family.rewrite_weight(layer) for layer in layers)
        h_after = block_outputs(tiny, layers[-1], CASES)
        z = report.vectors["z"]
        # every case's residual stream at the last critical layer moved toward its target
        assert ((z - h_after).norm(dim=1) < (z - h_before).norm(dim=1)).all()
        d = report.diagnostics
        assert d["residual_norm_final"] < 0.6 * d["residual_norm_initial"]
        for layer in layers:
            delta = tiny.rewrite_matrix(layer).detach() - (
                before[tiny.family.rewrite_weight(layer)].T if tiny.family.weight_is_in_by_out
                else before[tiny.family.rewrite_weight(layer)])
            assert torch.allclose(delta, report.vectors[f"delta_w_layer{layer}"], atol=1e-5)
            assert torch.linalg.matrix_rank(delta) <= len(CASES)
            assert d[f"update_norm_rel_layer{layer}"] > 0
    finally:
        snapshot.restore()


def test_memit_first_layer_update_matches_the_formula(data_dir):
    mue = load_model("tiny-llama")
    overrides = FAST["memit"]
    editor = get_editor("memit", overrides, data_dir=data_dir)
    hp = editor._resolve(mue)
    first = hp.layers[0]
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    keys = torch.stack([keys_and_values(mue, first, [fill(t, c.prompt) for t in templates], c.subject)[0].mean(0)
                        for c in CASES[:2]], dim=1)
    snapshot = WeightSnapshot(mue.model, editor.touched_parameters(mue, CASES[:2]))
    h = block_outputs(mue, hp.layers[-1], CASES[:2])
    try:
        report = editor.apply(mue, CASES[:2])
    finally:
        snapshot.restore()
    residual = (report.vectors["z"] - h).T / len(hp.layers)
    mom2 = layer_second_moment(mue, first, hp.mom2_corpus, hp.mom2_n_tokens, data_dir)
    r, k = residual.double(), keys.double()
    expected = r @ k.T @ torch.linalg.inv(hp.mom2_update_weight * mom2.double() + k @ k.T)
    got = report.vectors[f"delta_w_layer{first}"].double()
    assert float((got - expected).norm()) < 1e-4 * float(expected.norm())
