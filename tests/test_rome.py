"""ROME, C-ROME and r-ROME on the tiny models (every known family for the update's definition):
the update is the one the definition gives, keys and values are where the method says, and the v* search's prefix cache
is exact."""

import dataclasses

import pytest
import torch

from editguard import get_editor, load_model
from editguard.editors.keys import context_templates, fill, keys_and_values, subject_last_index
from editguard.editors.rome import RomeHparams, rank_one_update
from editguard.editors.value import (
    ValueObjective,
    _frozen,
    _PrefixCachedBatch,
    descend,
    optimize_value,
    optimize_values,
)
from editguard.models import WeightSnapshot
from editguard.models.loading import token_grid
from tests.tiny_edits import CASES, FAST_V, PARIS

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def test_rank_one_update_maps_the_key_to_v_star():
    g = torch.Generator().manual_seed(0)
    v_star, value = torch.randn(8, generator=g), torch.randn(8, generator=g)
    key, left = torch.randn(6, generator=g), torch.randn(6, generator=g)
    delta = rank_one_update(v_star, value, key, left)
    assert torch.allclose(delta @ key, v_star - value, atol=1e-5)
    direct = (v_star - value)[:, None] * left[None, :] / (left @ key)
    assert torch.allclose(delta, direct)


@pytest.mark.parametrize("consistent", [False, True], ids=["rome", "c-rome"])
def test_update_equals_its_definition(tiny_family, consistent):
    tiny = tiny_family
    editor = get_editor("c-rome" if consistent else "rome", FAST_V)
    layer = tiny.edit_layer
    hp = RomeHparams.for_family(tiny.family.name, FAST_V)
    templates = context_templates(tiny, hp.context_template_length_params, hp.template_seed)
    keys, values = keys_and_values(tiny, layer, [fill(t, PARIS.prompt) for t in templates], PARIS.subject)
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, [PARIS]))
    before = tiny.rewrite_matrix(layer).detach().clone()
    try:
        report = editor.apply(tiny, [PARIS])
        after = tiny.rewrite_matrix(layer).detach().clone()
        v_star = report.vectors["v_star"]
        # k̄ over the templates; kᵘ is template 0 ("{}"), i.e. the unprefixed prompt.
        k_bar, k_u = keys.mean(0), keys[0]
        assert torch.allclose(report.vectors["k_bar"], k_bar, atol=1e-5)
        assert torch.allclose(report.vectors["k_unprefixed"], k_u, atol=1e-5)
        k_used, value_used = (k_bar, values.mean(0)) if consistent else (k_u, values[0])
        expected = torch.outer(v_star - value_used, k_bar) / (k_bar @ k_used)  # mom2 off: left = k̄
        assert torch.allclose(after - before, expected, atol=1e-5, rtol=1e-4)
        # The edited layer now maps the key it used to v*.
        new_keys, new_values = keys_and_values(tiny, layer, [fill(t, PARIS.prompt) for t in templates], PARIS.subject)
        got = new_values.mean(0) if consistent else new_values[0]
        assert torch.allclose(got, v_star, atol=1e-4 * float(v_star.norm()) + 1e-5)
        d = report.diagnostics
        assert d["denominator_ratio"] == pytest.approx(d["denominator"] / d["denominator_kbar"])
        assert d["key_cosine"] == pytest.approx(
            float(torch.nn.functional.cosine_similarity(k_bar, k_u, dim=0)), abs=1e-5)
        assert d["update_norm"] == pytest.approx(float(expected.norm()), rel=1e-4)
        if consistent:
            assert d["denominator_ratio"] == pytest.approx(1.0)
    finally:
        snapshot.restore()
    assert torch.equal(tiny.rewrite_matrix(layer), before)


def test_mom2_adjustment_uses_the_inverse_second_moment(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path))
    from editguard.data import load_text_corpus
    from editguard.editors import covariance
    from editguard.editors.covariance import second_moment

    # An earlier test of the session may hold this C in memory: start without it, so that the
    # disk cache is written here (in the tmp cache) and checked.
    monkeypatch.setattr(covariance, "_IN_MEMORY", {})

    tiny = load_model("tiny-llama")
    overrides = {**FAST_V, "mom2_adjustment": True, "mom2_n_tokens": 3000}
    editor = get_editor("rome", overrides, data_dir=data_dir)
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, [PARIS]))
    try:
        report = editor.apply(tiny, [PARIS])
    finally:
        snapshot.restore()
    assert list((tmp_path / "stats").glob("*.safetensors")), "covariance statistics were not cached on disk"
    mom2 = second_moment(tiny, tiny.edit_layer, load_text_corpus("wikitext-2-raw", data_dir), n_tokens=3000)
    expected_left = torch.linalg.solve(mom2.double(), report.vectors["k_bar"].double()).float()
    assert torch.allclose(report.vectors["left"], expected_left, rtol=1e-3, atol=1e-4)


def test_prefix_cache_matches_a_full_forward(tiny):
    tok = tiny.tokenizer
    texts = ["{} is the capital of", "The weather. {} is produced by", "Yesterday it rained a lot. {} was born in"]
    sequences = [tok(fill(t, "Paris"))["input_ids"] for t in texts]
    lookups = [subject_last_index(tok, t, "Paris") for t in texts]
    assert lookups[0] == len(tok("Paris")["input_ids"]) - 1
    batch = _PrefixCachedBatch(tiny, sequences, lookups)
    with torch.no_grad():
        cached = batch.hidden(tiny)
        for row, (seq, lk) in enumerate(zip(sequences, lookups)):
            full = tiny.model.base_model(input_ids=torch.tensor([seq])).last_hidden_state[0, lk:]
            assert torch.allclose(cached[row, : len(seq) - lk], full, atol=1e-4), f"row {row}"


class FullValueObjective:
    """The v* loss the papers' compute_v computes: every sequence run whole through every layer
    (right-padded, no cache), δ added to the MLP output at the subject's last token, the LM head
    at every position; the target tokens are the last ones of each rewriting sequence."""

    def __init__(self, mue, hp, layer, case, templates):
        tok = mue.tokenizer
        self.mue, self.hp, self.layer = mue, hp, layer
        self.target = tok(" " + case.target_new, add_special_tokens=False)["input_ids"]
        prompts = [fill(t, case.prompt) for t in templates] + ["{} is a"]
        self.n_rewrite = len(templates)
        sequences = [tok(fill(p, case.subject))["input_ids"] for p in prompts]
        sequences = [s + self.target[:-1] for s in sequences[:-1]] + [sequences[-1]]
        self.lengths = [len(s) for s in sequences]
        self.lookups = [subject_last_index(tok, p, case.subject) for p in prompts]
        self.inputs = mue.pad_batch(sequences)
        self.recorded, self.kl_init = {}, None

    n_cases = 1   # descend's protocol: δ (1, hidden) -> loss (1), NLL per prompt (1, R)

    @property
    def scale(self):
        return self.recorded["v_init"]

    def __call__(self, delta):
        delta = delta[0]
        def add_delta(_module, _args, output):
            grid = token_grid(output, len(self.lengths)).clone()   # OPT's MLP sees a flattened batch
            if "v_init" not in self.recorded:
                self.recorded["v_init"] = grid[0, self.lookups[0]].detach().float().clone()[None]
            for row, idx in enumerate(self.lookups):
                grid[row, idx] = grid[row, idx] + delta
            return grid.view(output.shape)

        handle = self.mue.module(self.mue.family.mlp.format(self.layer)).register_forward_hook(add_delta)
        try:
            logits = self.mue.model(**self.inputs).logits.float()
        finally:
            handle.remove()
        log_probs = torch.log_softmax(logits, dim=-1)
        n_target = len(self.target)
        nll = torch.stack([
            -sum(log_probs[row, self.lengths[row] - n_target + j, token] for j, token in enumerate(self.target))
            / n_target
            for row in range(self.n_rewrite)
        ])
        kl_lp = log_probs[self.n_rewrite :, self.lookups[-1]]
        if self.kl_init is None:
            self.kl_init = kl_lp.detach().clone()
        kl = self.hp.kl_factor * torch.nn.functional.kl_div(self.kl_init, kl_lp, log_target=True,
                                                            reduction="batchmean")
        decay = self.hp.v_weight_decay * (delta.norm() / self.recorded["v_init"][0].norm() ** 2)
        return (nll.mean() + kl + decay)[None], nll[None]


def _value_setup(mue):
    hp = RomeHparams.for_family(mue.family.name, FAST_V, mue.name, n_layers=mue.n_layers)
    return hp, context_templates(mue, hp.context_template_length_params, hp.template_seed)


@pytest.mark.parametrize("layer", [0, 1])
def test_cached_value_objective_and_its_gradient_equal_the_full_computation(tiny_family, layer):
    """Prefix cache, cached lower layers, the start above the edited layer and the head at the
    needed positions only change nothing: loss and gradient with respect to δ are the full
    computation's, on every family."""
    tiny = tiny_family
    hp, templates = _value_setup(tiny)
    fast = ValueObjective(tiny, hp, layer, [PARIS], templates)
    # Each step starts above the edited layer unless it is the top one or a norm follows the MLP.
    block = tiny.module(tiny.family.layer.format(layer))
    post_mlp_norm = hasattr(block, "post_feedforward_layernorm")   # Gemma 2 and 3 norm the MLP output
    assert fast.starts_above_layer == (layer + 1 < tiny.n_layers and not post_mlp_norm)
    full = FullValueObjective(tiny, hp, layer, PARIS, templates)
    delta0 = torch.zeros(1, tiny.model.config.hidden_size)
    with torch.no_grad():
        fast(delta0), full(delta0)  # records v_init and the KL reference distribution
    assert torch.allclose(fast.recorded["v_init"], full.recorded["v_init"], atol=1e-5)
    delta = (0.5 * torch.randn(1, tiny.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
             ).requires_grad_(True)
    fast_loss, fast_nll = fast(delta)
    full_loss, full_nll = full(delta)
    fast_grad, = torch.autograd.grad(fast_loss.sum(), delta)
    full_grad, = torch.autograd.grad(full_loss.sum(), delta)
    assert torch.allclose(fast_nll, full_nll, rtol=1e-4, atol=1e-5)
    assert float(fast_loss.detach()[0]) == pytest.approx(float(full_loss.detach()[0]), rel=1e-5)
    assert full_grad.norm() > 0
    assert torch.allclose(fast_grad, full_grad, rtol=1e-3, atol=1e-6 * float(full_grad.abs().max()))


def test_v_star_equals_the_full_computation(tiny):
    hp, templates = _value_setup(tiny)
    layer = tiny.edit_layer
    assert layer > 0, "the tiny models' edit layer must have a layer below it to cache"
    weights_before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    fast = optimize_value(tiny, hp, layer, PARIS, templates)
    tiny.model.requires_grad_(False)
    full, = descend(FullValueObjective(tiny, hp, layer, PARIS, templates), hp, tiny.model.config.hidden_size,
                    tiny.device)
    assert fast.steps == full.steps == hp.v_num_grad_steps
    assert fast.losses == pytest.approx(full.losses, rel=1e-4)
    assert torch.allclose(fast.v_star, full.v_star, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, weights_before[k]) for k, v in tiny.model.state_dict().items())
    assert [type(m).__name__ for m in tiny.model.modules()].count("SkippedLayer") == 0


def test_v_search_stops_early_as_the_papers_code_does(tiny_llama):
    """It stops at the first step whose loss is below early_stop_loss, before that step's backward
    pass, and says how many steps it made."""
    hp, templates = _value_setup(tiny_llama)
    # No decay and a small step: on the tiny random model the loss then falls step by step.
    hp = dataclasses.replace(hp, v_num_grad_steps=6, early_stop_loss=0.0, v_weight_decay=0.0, v_lr=0.005)
    every_step = optimize_value(tiny_llama, hp, tiny_llama.edit_layer, PARIS, templates)
    assert every_step.steps == 6 and len(every_step.losses) == 6
    assert every_step.losses[0] > every_step.losses[1] > every_step.losses[2], every_step.losses
    threshold = (every_step.losses[1] + every_step.losses[2]) / 2
    stopped = optimize_value(tiny_llama, dataclasses.replace(hp, early_stop_loss=threshold),
                             tiny_llama.edit_layer, PARIS, templates)
    assert stopped.steps == 3
    assert stopped.losses == pytest.approx(every_step.losses[:3], rel=1e-6)
    assert stopped.loss < threshold


def test_cases_in_one_batch_get_the_loss_and_gradient_each_gets_alone(tiny_family):
    """Several cases' v* objectives share one batch (prompts of different lengths, subjects of one
    and several tokens, multi-token targets): each case's loss, NLL per prompt and gradient with
    respect to its own δ are those of its objective alone, on every family (Gemma 2/3 run the
    edited layer in each step)."""
    tiny = tiny_family
    hp, templates = _value_setup(tiny)
    layer = tiny.edit_layer
    hidden = tiny.model.config.hidden_size
    with _frozen(tiny.model):
        together = ValueObjective(tiny, hp, layer, CASES, templates)
        alone = [ValueObjective(tiny, hp, layer, [case], templates) for case in CASES]
        with torch.no_grad():   # records v_init and the KL reference distributions
            together(torch.zeros(len(CASES), hidden)), [one(torch.zeros(1, hidden)) for one in alone]
        delta = (0.5 * torch.randn(len(CASES), hidden, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
        loss, nll = together(delta)
        grad, = torch.autograd.grad(loss.sum(), delta)
        for c, (case, one) in enumerate(zip(CASES, alone)):
            assert torch.allclose(together.recorded["v_init"][c], one.recorded["v_init"][0], atol=1e-6), case.case_id
            own = delta[c : c + 1].detach().clone().requires_grad_(True)
            one_loss, one_nll = one(own)
            one_grad, = torch.autograd.grad(one_loss.sum(), own)
            assert float(loss[c].detach()) == pytest.approx(float(one_loss[0].detach()), rel=1e-5), case.case_id
            assert torch.allclose(nll[c], one_nll[0], rtol=1e-5, atol=1e-6), case.case_id
            assert one_grad.norm() > 0
            tolerance = 1e-5 * float(one_grad.abs().max())
            assert torch.allclose(grad[c], one_grad[0], rtol=1e-3, atol=tolerance), case.case_id
    # The cases differ, so rows mixed up between them would not pass unnoticed.
    assert len({round(float(v), 4) for v in loss.detach()}) == len(CASES)


def test_cases_searched_in_one_batch_get_the_v_star_each_gets_alone(tiny):
    """The whole search: each case's steps, losses and v* in one batch are those of its search
    alone. (On the tiny random Mistral, Qwen, Gemma 3, GPT-NeoX and OPT the loss barely moves
    with δ: Adam's step, ±lr per coordinate whatever the gradient's size, then takes the sign of
    gradient components at the level of float rounding, and two equal computations part; the
    objective test above covers those families.)"""
    hp, templates = _value_setup(tiny)
    hp = dataclasses.replace(hp, v_lr=0.005)
    layer = tiny.edit_layer
    alone = [optimize_value(tiny, hp, layer, case, templates) for case in CASES]
    together = optimize_values(tiny, hp, layer, CASES, templates, cases_per_search=len(CASES))
    for case, one, batched in zip(CASES, alone, together):
        assert batched.steps == one.steps, case.case_id
        assert batched.losses == pytest.approx(one.losses, rel=1e-5), case.case_id
        assert torch.allclose(batched.v_init, one.v_init, rtol=1e-5, atol=1e-6), case.case_id
        assert torch.allclose(batched.v_star, one.v_star, rtol=1e-4, atol=1e-5), case.case_id
        assert batched.target_prob == pytest.approx(one.target_prob, rel=1e-4, abs=1e-7), case.case_id


def test_a_case_that_stops_early_keeps_its_v_star_while_the_batch_goes_on(tiny_llama):
    """In one batch each case stops at its own step, as alone, and a stopped case's δ stays as it
    was when it stopped while the others' Adam steps go on."""
    hp, templates = _value_setup(tiny_llama)
    hp = dataclasses.replace(hp, v_num_grad_steps=6, early_stop_loss=0.0, v_weight_decay=0.0, v_lr=0.005)
    layer = tiny_llama.edit_layer
    every_step = [optimize_value(tiny_llama, hp, layer, case, templates) for case in CASES]
    first = every_step[0].losses
    threshold = (first[1] + first[2]) / 2
    stopping = dataclasses.replace(hp, early_stop_loss=threshold)
    alone = [optimize_value(tiny_llama, stopping, layer, case, templates) for case in CASES]
    assert alone[0].steps == 3
    assert len({r.steps for r in alone}) > 1, [r.losses for r in every_step]   # they stop at different steps
    together = optimize_values(tiny_llama, stopping, layer, CASES, templates, cases_per_search=len(CASES))
    for case, one, batched in zip(CASES, alone, together):
        assert batched.steps == one.steps, case.case_id
        assert batched.losses == pytest.approx(one.losses, rel=1e-5), case.case_id
        assert torch.allclose(batched.v_star, one.v_star, rtol=1e-5, atol=1e-6), case.case_id


def test_subject_first_one_token_prefix_is_empty():
    tiny = load_model("tiny-llama")
    batch = _PrefixCachedBatch(tiny, [[1, 2, 3]], [0])
    assert batch.cache is None


def test_bad_overrides_and_batches_are_rejected(tiny):
    with pytest.raises(ValueError, match="unknown ROME hyperparameters \\['v_steps'\\]; valid: .*v_num_grad_steps"):
        get_editor("rome", {"v_steps": 3}).touched_parameters(tiny, [PARIS])
    with pytest.raises(ValueError, match="one edit at a time; got 2 cases"):
        get_editor("rome", FAST_V).apply(tiny, [PARIS, dataclasses.replace(PARIS, case_id="t2")])


def test_context_templates_are_seeded_and_cached(tmp_path, monkeypatch):
    tiny = load_model("tiny-gpt2")
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "a"))
    first = context_templates(tiny, ((5, 10), (10, 10)), seed=0)
    assert len(first) == 21 and first[0] == "{}" and all(t.endswith(". {}") for t in first[1:])
    assert context_templates(tiny, ((5, 10), (10, 10)), seed=0) == first  # read back from disk
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "b"))
    assert context_templates(tiny, ((5, 10), (10, 10)), seed=0) == first  # regenerated: same seed, same text
    assert context_templates(tiny, ((5, 10), (10, 10)), seed=1) != first


def test_generated_template_text_is_cleaned_as_the_papers_code_cleans_it():
    from editguard.editors.keys import clean_generated

    assert clean_generated("Therefore\n\nTo create a ﬁle") == "Therefore To create a file"
    assert clean_generated("Because-dice(n):\n    n") == "Because-dice(n):\n    n"   # one newline stays
    assert clean_generated("café") == "cafe\u0301"   # NFKD


def test_bfloat16_model_keeps_the_sensitive_math_in_float32(data_dir):
    from editguard import check, measure_baseline
    from editguard.data import load_ppl_corpus

    mue = load_model("tiny-llama", dtype="bfloat16")
    baseline = measure_baseline(mue, load_ppl_corpus("me-ppl-50", data_dir)[:5])
    result = check(mue, get_editor("c-rome", FAST_V), PARIS, baseline)  # restores and verifies
    assert mue.rewrite_matrix(mue.edit_layer).dtype == torch.bfloat16
    assert result.diagnostics["denominator_ratio"] == pytest.approx(1.0)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.diagnostics.values() if isinstance(v, float))


def test_r_rome_uses_k_bar_in_numerator_and_denominator_and_tests_without_prefix(tiny):
    editor = get_editor("r-rome", FAST_V)
    hp = RomeHparams.for_family(tiny.family.name, FAST_V)
    layer = tiny.edit_layer
    templates = context_templates(tiny, hp.context_template_length_params, hp.template_seed)
    keys, values = keys_and_values(tiny, layer, [fill(t, PARIS.prompt) for t in templates], PARIS.subject)
    k_bar, v_bar = keys.mean(0), values.mean(0)   # v̄ = W k̄ + b
    snapshot = WeightSnapshot(tiny.model, editor.touched_parameters(tiny, [PARIS]))
    before = tiny.rewrite_matrix(layer).detach().clone()
    try:
        report = editor.apply(tiny, [PARIS])
        delta = tiny.rewrite_matrix(layer).detach() - before
    finally:
        snapshot.restore()
    v_star = report.vectors["v_star"]
    expected = rank_one_update(v_star, v_bar, k_bar, k_bar)   # mom2 off: C⁻¹k̄ = k̄
    assert torch.allclose(delta, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(delta @ k_bar, v_star - v_bar, atol=1e-4 * float(v_star.norm()) + 1e-5)
    assert report.diagnostics["denominator_ratio"] == pytest.approx(1.0)
    assert report.test_prefix == "" and editor.hparams(tiny)["prefix_at_test"] is False
    c_rome = get_editor("c-rome", FAST_V)
    try:
        c_report = c_rome.apply(tiny, [PARIS])
    finally:
        snapshot.restore()
    assert c_report.test_prefix != "" and torch.allclose(c_report.vectors["delta_w"], report.vectors["delta_w"])
