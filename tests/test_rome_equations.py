"""ROME with C⁻¹ on (`mom2_adjustment: true`) and a multi-token target, checked against the ROME
paper's equations as its code (kmeng01/rome: compute_u.py, compute_v.py, rome_main.py,
layer_stats.py) computes them, on every tiny family.

Everything the check compares with is computed here, with this file's own forward hooks and torch
ops on plain one-sequence forward passes (no padding, no caches): the keys at the subject's last
token, k̄ over the context templates, C = E[kkᵀ] over the same corpus tokens editguard's ROME uses,
u = C⁻¹k̄ / ‖C⁻¹k̄‖ (compute_u), the rank-one update ΔW = (v* − W kᵘ − b) uᵀ / (uᵀkᵘ) (compute_v's
right vector, rome_main's outer product) from the v* editguard's edit reports, and the v* loss's
rewriting prompts as compute_v builds them: the target re-tokenised as part of the prompt text
(`context.format(prompt) + tok.decode(target_ids[:-1])`), the loss on every target token at the
last len(target) positions.

v* itself is an optimisation (Adam over δ); what is compared is its starting point (the same
sequences, positions and labels give the same initial NLL per rewriting prompt) and the update
written for the v* found. The context templates are editguard's (they are sampled text, and the
same templates go into both computations).
"""

import math

import pytest
import torch

from editguard import EditCase, load_model
from editguard.data import load_text_corpus
from editguard.editors.covariance import StatsSource, second_moment_from
from editguard.editors.keys import context_templates
from editguard.editors.rome import ROME
from editguard.editors.value import ValueObjective
from editguard.models.registry import MODELS
from tests.tiny_edits import FAST_V, N_TOKENS

pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")

TINY_FAMILIES = [name for name, spec in MODELS.items() if spec.kind == "tiny"]
# A multi-token target whose first word differs from the true answer's, and a subject inside the prompt.
CASE = EditCase("equations", "The mother tongue of {} is", "Danielle Darrieux", "Old Norse", "French")
SEQ_LEN = 256   # editguard's covariance sequences (covariance.second_moment)


def replace_once(template: str, text: str) -> str:
    return template.replace("{}", text, 1)


class Hooked:
    """The input and output of one module in plain forward passes of single sequences."""

    def __init__(self, mue, path: str):
        self.mue, self.module = mue, dict(mue.model.named_modules())[path]

    @torch.no_grad()
    def run(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(module input, module output, logits), one row per token, float32."""
        seen = {}

        def hook(_module, args, output):
            seen["in"], seen["out"] = args[0], output

        handle = self.module.register_forward_hook(hook)
        try:
            logits = self.mue.model(input_ids=torch.tensor([ids], device=self.mue.device)).logits[0]
        finally:
            handle.remove()
        width_in, width_out = seen["in"].shape[-1], seen["out"].shape[-1]
        return (seen["in"].reshape(-1, width_in).float(), seen["out"].reshape(-1, width_out).float(),
                logits.float())


def subject_last(tok, template: str, subject: str) -> int:
    """compute_v.find_fact_lookup_idx / repr_tools with fact_token subject_last: the length of the
    tokenized text up to the subject's end, minus one."""
    return len(tok(template[: template.index("{}")] + subject)["input_ids"]) - 1


def key_and_value(hooked: Hooked, tok, template: str, subject: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tok(replace_once(template, subject))["input_ids"]
    k, v, _ = hooked.run(ids)
    i = subject_last(tok, template, subject)
    return k[i], v[i]


def corpus_second_moment(hooked: Hooked, tok, lines: list[str], n_tokens: int) -> torch.Tensor:
    """E[kkᵀ] (float64) over the first ⌈n_tokens / 256⌉ 256-token pieces of the corpus's token
    stream (each line tokenised with its newline, no special tokens), each piece run alone."""
    n_pieces = math.ceil(n_tokens / SEQ_LEN)
    stream: list[int] = []
    for line in lines:
        stream.extend(tok(line + "\n", add_special_tokens=False)["input_ids"])
        if len(stream) >= n_pieces * SEQ_LEN:
            break
    total, count = None, 0
    for p in range(n_pieces):
        keys = hooked.run(stream[p * SEQ_LEN : (p + 1) * SEQ_LEN])[0].double()
        total = keys.T @ keys if total is None else total + keys.T @ keys
        count += keys.shape[0]
    return total / count


def papers_target_ids(tok, target: str) -> list[int]:
    """rome_main: a space before the target; compute_v: tok(target) (EasyEdit drops a leading BOS,
    which add_special_tokens=False does for the tokenizers that put one)."""
    return tok(" " + target, add_special_tokens=False)["input_ids"]


def papers_rewriting_ids(tok, template: str, case: EditCase, target_ids: list[int]) -> list[int]:
    """compute_v: context.format(prompt) + tok.decode(target_ids[:-1]), then .format(subject),
    tokenised as one text."""
    text = replace_once(template, case.prompt) + tok.decode(target_ids[:-1])
    return tok(replace_once(text, case.subject))["input_ids"]


def papers_initial_nll(hooked: Hooked, tok, template: str, case: EditCase, target_ids: list[int]) -> float:
    """compute_v's nll_loss_each at δ = 0: the logits at the last len(target) positions of the
    rewriting prompt (padding aside) score the target tokens; summed and divided by len(target)."""
    ids = papers_rewriting_ids(tok, template, case, target_ids)
    logits = hooked.run(ids)[2]
    n = len(target_ids)
    log_probs = torch.log_softmax(logits[len(ids) - n :], dim=-1)
    return float(-log_probs[torch.arange(n), torch.tensor(target_ids)].sum() / n)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_rome_with_inverse_second_moment_follows_the_papers_equations(name, data_dir):
    mue = load_model(name)
    tok = mue.tokenizer
    overrides = {**FAST_V, "mom2_adjustment": True, "mom2_n_tokens": N_TOKENS}
    editor = ROME(overrides=overrides, data_dir=data_dir)
    hp = editor._resolve(mue)
    layer = hp.layer
    hooked = Hooked(mue, mue.family.rewrite.format(layer))
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    assert templates[0] == "{}" and len(templates) > 1

    # compute_u: k̄ is the mean key at the subject's last token over templ.format(prompt).
    keys = [key_and_value(hooked, tok, replace_once(t, CASE.prompt), CASE.subject)[0] for t in templates]
    k_bar = torch.stack(keys).mean(0)
    # compute_v.get_module_input_output_at_word: kᵘ and W kᵘ + b at the bare prompt.
    k_u, v_u = key_and_value(hooked, tok, CASE.prompt, CASE.subject)

    # layer_stats: C = E[kkᵀ] over the corpus; editguard's ROME draws its tokens from mom2_corpus.
    c = corpus_second_moment(hooked, tok, load_text_corpus(hp.mom2_corpus, data_dir), hp.mom2_n_tokens)
    c_editguard = second_moment_from(mue, layer, StatsSource.of(hp), data_dir).double().cpu()
    assert c_editguard.shape == c.shape
    assert torch.allclose(c_editguard, c, rtol=1e-4, atol=1e-5 * float(c.abs().max()))

    before = mue.rewrite_matrix(layer).detach().clone()
    try:
        report = editor.apply(mue, [CASE])
        after = mue.rewrite_matrix(layer).detach().clone()
    finally:
        with torch.no_grad():
            mue.rewrite_matrix(layer).copy_(before)

    vec = report.vectors
    assert torch.allclose(vec["k_bar"], k_bar, rtol=1e-4, atol=1e-5 * float(k_bar.abs().max()))
    assert torch.allclose(vec["k_unprefixed"], k_u, rtol=1e-4, atol=1e-5 * float(k_u.abs().max()))
    v_star = vec["v_star"].float().cpu()
    actual = after - before
    assert torch.isfinite(actual).all()

    def papers_update(second_moment: torch.Tensor) -> torch.Tensor:
        """compute_u's u = C⁻¹k̄ / ‖C⁻¹k̄‖; compute_v's right vector (v* − W kᵘ − b) / (uᵀkᵘ);
        rome_main's update u ⊗ right, as (out, in)."""
        u = torch.linalg.solve(second_moment.double(), k_bar.double())
        u = (u / u.norm()).float()
        return torch.outer(v_star - v_u, u) / (u @ k_u)

    def relative_error(expected: torch.Tensor) -> float:
        return float((actual - expected).abs().max() / expected.abs().max())

    # Given the C editguard holds (float32, as ROME's layer_stats keeps it), the update is the
    # papers' to float32 precision.
    assert relative_error(papers_update(c_editguard)) < 1e-4, f"{name}: ΔW is not the papers' for editguard's C"
    # With this file's own C: within what rounding C to float32 alone moves the update (C⁻¹ magnifies
    # it by C's condition number: about 4·10⁶ for tiny-gptj's keys over 3,000 tokens, 2·10³ for tiny-llama's).
    exact = papers_update(c)
    rounding = float((papers_update(c.float()) - exact).abs().max() / exact.abs().max())
    assert relative_error(exact) < max(1e-4, 3 * rounding), (
        f"{name}: ΔW written differs from the papers' by {relative_error(exact):.3g} of its largest entry "
        f"(float32 rounding of C accounts for {rounding:.3g})")
    u = torch.linalg.solve(c_editguard, k_bar.double())
    u = (u / u.norm()).float()
    assert report.diagnostics["denominator"] == pytest.approx(float(u @ k_u), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_multi_token_target_loss_starts_where_the_papers_does(name):
    mue = load_model(name)
    tok = mue.tokenizer
    hp = ROME(overrides=FAST_V)._resolve(mue)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    hooked = Hooked(mue, mue.family.rewrite.format(hp.layer))
    target_ids = papers_target_ids(tok, CASE.target_new)
    assert len(target_ids) > 1, "the check needs a multi-token target"

    objective = ValueObjective(mue, hp, hp.layer, [CASE], templates)
    with torch.no_grad():
        _loss, (nll,) = objective(torch.zeros(1, mue.model.config.hidden_size, device=mue.device))
    # The same label tokens, target by target, for every rewriting prompt.
    assert objective.labels.view(len(templates), -1).tolist() == [target_ids] * len(templates)
    expected = [papers_initial_nll(hooked, tok, t, CASE, target_ids) for t in templates]
    assert nll.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # v_init, the MLP output at the subject's last token of the unprefixed rewriting prompt
    # (compute_v's target_init), is W kᵘ + b of the bare prompt.
    _k_u, v_u = key_and_value(hooked, tok, CASE.prompt, CASE.subject)
    assert torch.allclose(objective.recorded["v_init"][0].cpu(), v_u, rtol=1e-4, atol=1e-5 * float(v_u.abs().max()))
