"""MEND: the untrained editor network is a gradient step, updates are sums of rank-1 terms on the
chosen matrices only, training lowers the edit loss, the trained editor is cached (keyed by model
fingerprint, data, hyperparameters, steps) and round-trips, the guard restores the model exactly,
and a missing editor names the command that trains one. Tiny models of all three families."""

import dataclasses
import json

import pytest
import torch

from editguard import EditCase, get_editor, load_model
from editguard.cache import CacheWarning, tensors_from_bytes
from editguard.cases import write_cases
from editguard.editors.mend.editor import MendNotTrained
from editguard.editors.mend.hparams import FAMILY_MODULES, edited_matrices, resolve_hparams
from editguard.editors.mend.network import MendNetwork
from editguard.editors.mend.store import cached_editors, load_trained, save_trained
from editguard.editors.mend.training import data_hash, gradient_pairs, train_mend, trained_key
from editguard.editors.registry import available_editors
from editguard.mend_data import training_cases
from editguard.models import WeightSnapshot
from editguard.tokens import edit_batch
from tests.tiny_edits import TINY_MODELS, copy_parameters


def _case(i, prompt, subject, new, true, paraphrase, neighbour):
    return EditCase(f"m{i}", prompt, subject, new, true, (paraphrase,), (neighbour,))


CASES = [
    _case(1, "{} is the capital of", "Paris", "Rome", "France", "Paris, the capital city of", "Lyon is a city in"),
    _case(2, "{} was born in", "Mozart", "Berlin", "Salzburg", "The birthplace of Mozart is", "Haydn was born in"),
    _case(3, "The mother tongue of {} is", "Danielle Darrieux", "English", "French",
          "Danielle Darrieux speaks the language", "The mother tongue of Jean Gabin is"),
    _case(4, "{} plays the", "Miles Davis", "violin", "trumpet", "The instrument of Miles Davis is the",
          "Louis Armstrong plays the"),
    _case(5, "{} is located in", "Mount Fuji", "Chile", "Japan", "Mount Fuji can be found in", "Osaka is located in"),
    _case(6, "{} works as a", "Marie Curie", "banker", "physicist", "By profession, Marie Curie is a",
          "Pierre Curie works as a"),
    _case(7, "The official language of {} is", "Brazil", "Dutch", "Portuguese", "In Brazil people speak",
          "The official language of Portugal is"),
    _case(8, "{} is a product of", "iPhone", "Nokia", "Apple", "The iPhone is made by", "The iPad is a product of"),
]
SENTENCES = ["The river flows through the old town and into the sea.",
             "She opened the window and looked at the garden for a long time."]
TRAIN = {"batch_size": 2, "lr": 1e-3, "lr_lr": 1e-3}   # tiny models learn in a few dozen steps
STEPS = 30


pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


@pytest.fixture(scope="module")
def trained():
    """A small editor per family, trained on the synthetic cases and saved in the module's cache."""
    out = {}
    for name in TINY_MODELS:
        mue = load_model(name)
        editor = train_mend(mue, CASES, TRAIN, steps=STEPS)
        save_trained(editor)
        out[name] = editor
    return out



def changed(mue, before):
    return sorted(n for n, p in mue.model.named_parameters() if not torch.equal(p.detach(), before[n]))


# --- registry and hyperparameters ---------------------------------------------------------

def test_registered_with_family_defaults(tiny):
    assert "mend" in available_editors() and get_editor("mend").name == "mend"
    hp = get_editor("mend").hparams(tiny)
    assert hp["layers"] == (1, 2, 3)  # the last 3 of 4 layers
    assert hp["modules"] == FAMILY_MODULES[tiny.family.name]
    names = get_editor("mend").touched_parameters(tiny, CASES[:1])
    assert len(names) == 3 * len(hp["modules"]) and all(n.endswith(".weight") for n in names)


def test_unknown_and_mistyped_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match=r"unknown MEND hyperparameters \['rnak'\]; valid: \[.*'rank'"):
        get_editor("mend", {"rnak": 8})
    with pytest.raises(ValueError, match=r"MEND hyperparameter 'rank' must be int"):
        get_editor("mend", {"rank": "8"})
    with pytest.raises(ValueError,
                       match=r"MEND hyperparameter 'layers' must be within the model's layers 0\.\.3, got \(2, 9\)"):
        get_editor("mend", {"layers": [2, 9]}).touched_parameters(load_model("tiny-llama"), CASES[:1])


# --- the math -----------------------------------------------------------------------------

def test_untrained_network_gives_the_scaled_fine_tuning_gradient(tiny):
    hp = resolve_hparams(tiny, {"edit_lr_init": 1e-3})
    matrices = edited_matrices(tiny, hp)
    network = MendNetwork(matrices, hp)
    batch = edit_batch(tiny, CASES[:2])
    pairs, nll = gradient_pairs(tiny, matrices, batch)
    with torch.no_grad():
        updates = network.updates(pairs)
    weights = [tiny.parameter(m.name) for m in matrices]
    with torch.enable_grad():
        loss = batch.nll(tiny.model(**batch.inputs).logits, reduction="sum")   # Σ over the 2 edits
        grads = torch.autograd.grad(loss, weights)
    assert float(loss.detach()) / 2 == pytest.approx(nll, rel=1e-6)
    for m, grad in zip(matrices, grads):
        grad = grad.T if m.in_by_out else grad          # (out, in)
        assert updates[m.name].shape == (m.d_out, m.d_in)
        assert torch.allclose(updates[m.name], -1e-3 * grad, rtol=1e-4, atol=1e-8 * float(grad.abs().max()))


def test_an_edit_gets_the_same_token_pairs_alone_or_in_a_batch():
    """Training batches several edits, the guard applies one: the edit loss sums over the batch's
    edits, so each edit's (u, δ) rows do not depend on the others."""
    mue = load_model("tiny-gptj")
    matrices = edited_matrices(mue, resolve_hparams(mue, {}))
    alone, _ = gradient_pairs(mue, matrices, edit_batch(mue, CASES[:1]))
    batched, _ = gradient_pairs(mue, matrices, edit_batch(mue, CASES[:3]))
    for m in matrices:
        (u1, d1), (u3, d3) = alone[m.name], batched[m.name]
        n = len(u1)
        assert 0 < n < len(u3)
        assert torch.allclose(u3[:n], u1, atol=1e-5) and torch.allclose(d3[:n], d1, atol=1e-6, rtol=1e-4)


def test_update_touches_only_the_chosen_matrices_and_is_a_sum_of_rank_one_terms():
    mue = load_model("tiny-llama")
    chosen = {"layers": [1, 3], "modules": ["mlp.up_proj", "mlp.down_proj"]}
    save_trained(train_mend(mue, CASES, {**TRAIN, **chosen}, steps=5))
    editor = get_editor("mend", chosen)
    touched = editor.touched_parameters(mue, CASES[:1])
    assert touched == [f"model.layers.{layer}.mlp.{m}.weight" for layer in (1, 3) for m in ("up_proj", "down_proj")]
    before = copy_parameters(mue)
    snapshot = WeightSnapshot(mue.model, touched)
    try:
        report = editor.apply(mue, CASES[:1])
        assert changed(mue, before) == sorted(touched) and report.touched == touched
        n_tokens = report.diagnostics["n_tokens"]
        assert n_tokens < 64  # fewer tokens than the matrices' smaller side, so the bound means something
        for name in touched:
            delta = mue.parameter(name).detach() - before[name]
            assert 0 < int(torch.linalg.matrix_rank(delta)) <= n_tokens
    finally:
        snapshot.restore()
    assert changed(mue, before) == []


# --- training -----------------------------------------------------------------------------

def test_training_lowers_the_edit_loss_and_is_deterministic(trained):
    for name, editor in trained.items():
        log = editor.log
        assert len(log) == STEPS and editor.steps == STEPS
        first = log[0]["edit_nll_after"]
        last = sum(r["edit_nll_after"] for r in log[-5:]) / 5
        before = sum(r["edit_nll_before"] for r in log[-5:]) / 5
        assert last < first - 0.3, f"{name}: edit NLL after the edit {first:.3f} -> {last:.3f}"
        assert last < before - 0.3, f"{name}: the trained edit does not lower the NLL ({before:.3f} -> {last:.3f})"
        assert log[-1]["edit_lr_mean"] > log[0]["edit_lr_mean"]
    mue = load_model("tiny-gptj")
    again = train_mend(mue, CASES, TRAIN, steps=STEPS)
    assert [r["edit_nll_after"] for r in again.log] == [r["edit_nll_after"] for r in trained["tiny-gptj"].log]


def test_training_leaves_the_model_unchanged():
    mue = load_model("tiny-gpt2")
    before = copy_parameters(mue)
    flags = {n: p.requires_grad for n, p in mue.model.named_parameters()}
    train_mend(mue, CASES, TRAIN, steps=2)
    assert changed(mue, before) == []
    assert {n: p.requires_grad for n, p in mue.model.named_parameters()} == flags
    assert all(p.grad is None for p in mue.model.parameters())


# --- the cache ----------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_updates(trained, tmp_path):
    mue = load_model("tiny-gpt2")
    editor = trained["tiny-gpt2"]
    path = save_trained(editor, tmp_path)
    loaded = load_trained(path, mue)
    assert (loaded.key, loaded.steps, loaded.data_hash, loaded.hparams) == (editor.key, editor.steps,
                                                                            editor.data_hash, editor.hparams)
    pairs, _ = gradient_pairs(mue, editor.network.matrices, edit_batch(mue, CASES[2:3]))
    with torch.no_grad():
        a, b = editor.network.updates(pairs), loaded.network.updates(pairs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_store_is_safetensors_with_json_metadata(trained, tmp_path):
    editor = trained["tiny-gpt2"]
    path = save_trained(editor, tmp_path)
    assert path.suffix == ".safetensors"
    state, meta = tensors_from_bytes(path.read_bytes())     # no pickle anywhere
    assert state.keys() == editor.network.state_dict().keys()
    assert meta["key"] == editor.key and meta["steps"] == STEPS and len(meta["log"]) == STEPS
    assert json.loads(path.with_suffix(".json").read_text())["key"] == editor.key


def test_a_tampered_store_file_is_refused_not_loaded(trained, tmp_path):
    mue = load_model("tiny-gpt2")
    path = save_trained(trained["tiny-gpt2"], tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF   # one byte of the last tensor; the file still parses as safetensors
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="does not match its checksum"):
        assert load_trained(path, mue) is None
    assert not path.exists()


def test_the_editor_refuses_a_tampered_network():
    """The only cached editor for these weights is damaged: `mend` says so and asks for training
    instead of editing with it."""
    mue = dataclasses.replace(load_model("tiny-llama"), fingerprint="00112233445566aa")
    path = save_trained(train_mend(mue, CASES, TRAIN, steps=2))
    assert cached_editors(mue, resolve_hparams(mue, {}))
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    before = copy_parameters(mue)
    with pytest.warns(CacheWarning, match=path.name), pytest.raises(MendNotTrained, match="train one with"):
        get_editor("mend").apply(mue, CASES[:1])
    assert changed(mue, before) == []
    assert cached_editors(mue, resolve_hparams(mue, {})) == []


def test_cache_key_follows_fingerprint_data_hparams_and_steps(trained):
    mue = load_model("tiny-llama")
    hp = resolve_hparams(mue, TRAIN)
    data = data_hash(CASES)
    key = trained_key(mue.fingerprint, data, hp, STEPS)
    assert key == trained["tiny-llama"].key
    assert trained_key("0123456789abcdef", data, hp, STEPS) != key
    assert trained_key(mue.fingerprint, data_hash(CASES[:-1]), hp, STEPS) != key
    assert trained_key(mue.fingerprint, data_hash(CASES, ["a locality sentence"]), hp, STEPS) != key
    assert trained_key(mue.fingerprint, data, dataclasses.replace(hp, lr=5e-4), STEPS) != key
    assert trained_key(mue.fingerprint, data, hp, STEPS + 1) != key
    # an editor is found only for the weights it was trained on
    assert cached_editors(mue, hp)
    assert cached_editors(dataclasses.replace(mue, fingerprint="0123456789abcdef"), hp) == []


def test_missing_editor_names_the_command():
    mue = dataclasses.replace(load_model("tiny-gptj"), fingerprint="fedcba9876543210")  # nothing trained for it
    with pytest.raises(MendNotTrained, match=r"train one with `editguard train-mend --model tiny-gptj`"):
        get_editor("mend").apply(mue, CASES[:1])
    with pytest.raises(MendNotTrained, match=r"`editguard train-mend --model tiny-gptj --hparams FILE`"):
        get_editor("mend", {"rank": 7}).apply(mue, CASES[:1])


# --- under the guard ----------------------------------------------------------------------

def test_check_restores_exactly_and_reports_the_anatomy(tiny, trained):
    from editguard.guard import check, measure_baseline

    editor = get_editor("mend")
    baseline = measure_baseline(tiny, SENTENCES)
    before = copy_parameters(tiny)
    result = check(tiny, editor, CASES[0], baseline)
    assert changed(tiny, before) == []
    d = result.diagnostics
    matrices = edited_matrices(tiny, resolve_hparams(tiny, {}))
    # the guard's editor-agnostic anatomy: every touched matrix, its ‖ΔW‖/‖W‖ and blast radius
    assert sorted(d["touched_matrices"]) == sorted(m.name for m in matrices)
    for m in matrices:
        entry = d["touched_matrices"][m.name]
        assert entry["update_norm_rel"] == pytest.approx(d[f"update_norm_rel_{m.label}"], rel=1e-4)
        assert entry["update_norm_rel"] > 0 and entry["blast_radius"] > 0
    assert d["update_norm_rel"] == pytest.approx(max(d[f"update_norm_rel_{m.label}"] for m in matrices), rel=1e-4)
    assert d["blast_radius"] == max(e["blast_radius"] for e in d["touched_matrices"].values())
    assert d["trained_steps"] == STEPS and d["trained_key"] == trained[tiny.name].key
    assert d["edit_nll_after"] < d["edit_nll_before"]
    assert result.editor == "mend" and result.efficacy is not None


# --- data and the command -----------------------------------------------------------------

def test_training_cases_leave_out_every_case_the_suites_edit(data_dir):
    from editguard.cases import read_cases
    from editguard.suite_files import find_mined_suite
    from editguard.suites import normal_sample

    cases, excluded = training_cases("smollm2-135m", "counterfact", data_dir)
    ids = {c.case_id for c in cases}
    hard = {c.case_id for c in read_cases(find_mined_suite("smollm2-135m"))}
    assert excluded > 0 and len(cases) + excluded == 10_000
    assert not ids & hard
    assert not ids & {c.case_id for c in normal_sample(len(hard), data_dir)}
    assert not ids & {c.case_id for c in normal_sample(10, data_dir)}


def test_train_mend_command_caches_and_reuses(tmp_path, capsys):
    from editguard.cli import main

    case_file = write_cases(tmp_path / "cases.json", CASES)
    argv = ["train-mend", "--model", "tiny-gpt2", "--steps", "4", "--cases", str(case_file), "--no-ppl-locality"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "MEND on tiny-gpt2: 8 training cases" in out and "loss curve" in out and "s/step" in out
    from editguard import load_model

    assert "cached as " in out and f"/mend/{load_model('tiny-gpt2').fingerprint}-" in out
    assert main(argv) == 0
    assert "already trained" in capsys.readouterr().out
