"""AlphaEdit on the tiny models: the projected solve, an update orthogonal to the preserved
subspace, and preserved keys that accumulate over sequential edits until reset."""

import pytest
import torch

from editguard import get_editor, load_model
from editguard.editors.alphaedit import alphaedit_solve, nullspace_projection
from editguard.editors.covariance import layer_second_moment
from editguard.models import WeightSnapshot
from tests.tiny_edits import CASES, FAST, N_TOKENS

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def median_eigenvalue(mue, layer: int, data_dir) -> float:
    mom2 = layer_second_moment(mue, layer, "wikitext-2-raw", N_TOKENS, data_dir)
    return float(torch.linalg.eigvalsh(mom2.double()).median())


def test_alphaedit_solve_is_projected():
    g = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    mom2 = basis @ torch.diag(torch.tensor([1.0] * 6 + [1e-4] * 4)) @ basis.T
    projection, dim = nullspace_projection(mom2, 1e-2)
    assert dim == 4 and torch.allclose(projection, basis[:, 6:] @ basis[:, 6:].T, atol=1e-5)
    keys, residual, preserved = (torch.randn(10, 2, generator=g), torch.randn(5, 2, generator=g),
                                 torch.randn(10, 3, generator=g))
    delta = alphaedit_solve(residual, keys, projection, preserved, 0.5)
    p = projection
    closed_form = residual @ keys.T @ p @ torch.linalg.inv(preserved @ preserved.T @ p + keys @ keys.T @ p
                                                           + 0.5 * torch.eye(10))
    assert torch.allclose(delta, closed_form, atol=1e-4)
    assert float((delta @ basis[:, :6]).norm()) < 1e-5 * float(delta.norm())


def test_alphaedit_is_orthogonal_to_the_preserved_subspace(tiny, data_dir):
    layers = (1, 2)
    threshold = median_eigenvalue(tiny, layers[0], data_dir)
    editor = get_editor("alphaedit", {**FAST["alphaedit"], "nullspace_threshold": threshold}, data_dir=data_dir)
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, CASES))
    try:
        report = editor.apply(tiny, CASES)
    finally:
        snapshot.restore()
    for layer in layers:
        mom2 = layer_second_moment(tiny, layer, "wikitext-2-raw", N_TOKENS, data_dir)
        eigenvalues, eigenvectors = torch.linalg.eigh(mom2.double())
        preserved = eigenvectors[:, eigenvalues >= threshold].float()   # where normal-text keys live
        assert 0 < preserved.shape[1] < mom2.shape[0]
        delta = report.vectors[f"delta_w_layer{layer}"]
        assert float(delta.norm()) > 1e-6
        assert float((delta @ preserved).norm()) < 1e-4 * float(delta.norm())
        assert report.diagnostics[f"nullspace_dim_layer{layer}"] == mom2.shape[0] - preserved.shape[1]


def test_alphaedit_accumulates_preserved_keys_until_reset(data_dir):
    mue = load_model("tiny-gpt2")
    editor = get_editor("alphaedit", FAST["alphaedit"], data_dir=data_dir)
    layers = editor.hparams(mue)["layers"]
    snapshot = WeightSnapshot(mue.model, editor.touched_parameters(mue, CASES))
    try:
        first = editor.apply(mue, CASES[:1])
        assert [editor.preserved_count(mue, layer) for layer in layers] == [1, 1]
        second = editor.apply(mue, CASES[1:])  # sequential: on top of the first edit
        assert [editor.preserved_count(mue, layer) for layer in layers] == [3, 3]
        assert second.diagnostics[f"preserved_keys_layer{layers[0]}"] == 1
        assert not first.diagnostics["preserved_keys_dropped"] and not second.diagnostics["preserved_keys_dropped"]
        # the remembered keys are the ones each edit used
        assert torch.allclose(editor.preserved_keys[(mue.fingerprint, layers[0])][:, :1],
                              first.vectors[f"keys_layer{layers[0]}"])
    finally:
        snapshot.restore()
    # the weights no longer hold those edits: the next edit starts afresh
    try:
        third = editor.apply(mue, CASES[:1])
        assert third.diagnostics["preserved_keys_dropped"]
        assert [editor.preserved_count(mue, layer) for layer in layers] == [1, 1]
    finally:
        snapshot.restore()
    editor.reset()
    assert editor.preserved_keys == {} and editor.preserved_count(mue, layers[0]) == 0
