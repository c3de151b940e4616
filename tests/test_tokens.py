"""Prompt + target batches (editguard.tokens): the target tokens sit right after their prompt, the
padding is on the right and masked, and the batched NLL and log-probabilities equal a naive
computation pair by pair. FT's edit loss and efficacy's log-probabilities, which now use these
batches, give bitwise the numbers of the code they replaced. Tiny models of all three families."""

import pytest
import torch

from editguard import EditCase, load_model
from editguard.metrics.efficacy import target_logprobs
from editguard.tokens import TokenBatch, edit_batch, prompt_target_ids, target_batch

FAMILIES = ["tiny-gpt2", "tiny-gptj", "tiny-llama"]
PROMPTS = ["The capital of France is", "Mozart was born in the city of", "Miles Davis plays the"]
TARGETS = ["Paris", "Salzburg in Austria", "trumpet"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=FAMILIES)
def tiny(request):
    return load_model(request.param)


def naive_token_logprobs(mue, prompt: str, target: str) -> torch.Tensor:
    """log P of each target token, from the pair alone (no batch, no padding)."""
    prompt_ids, target_ids = prompt_target_ids(mue.tokenizer, prompt, target)
    ids = torch.tensor([prompt_ids + target_ids], device=mue.device)
    with torch.no_grad():
        log_probs = torch.log_softmax(mue.model(input_ids=ids).logits[0].float(), dim=-1)
    return torch.stack([log_probs[len(prompt_ids) - 1 + j, t] for j, t in enumerate(target_ids)])


def test_prompt_target_ids_continue_the_prompt(tiny):
    prompt_ids, target_ids = prompt_target_ids(tiny.tokenizer, PROMPTS[0], TARGETS[0])
    assert prompt_ids == tiny.tokenizer(PROMPTS[0])["input_ids"]
    assert target_ids == tiny.tokenizer(" Paris", add_special_tokens=False)["input_ids"] and target_ids


def test_target_positions_labels_and_padding(tiny):
    batch = target_batch(tiny, PROMPTS, TARGETS)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    pairs = [prompt_target_ids(tiny.tokenizer, p, t) for p, t in zip(PROMPTS, TARGETS)]
    lengths = [len(p) + len(t) for p, t in pairs]
    assert batch.n == 3 and ids.shape == (3, max(lengths))
    assert mask.sum(1).tolist() == lengths
    for row, (prompt_ids, target_ids) in enumerate(pairs):
        assert ids[row, : lengths[row]].tolist() == prompt_ids + target_ids
        # right padding: pad ids, masked out
        assert (ids[row, lengths[row]:] == tiny.tokenizer.pad_token_id).all()
        assert (mask[row, lengths[row]:] == 0).all() and (mask[row, : lengths[row]] == 1).all()
        at = batch.rows == row
        # target token j is predicted at the position before it: the prompt's last token, then the target's
        assert batch.cols[at].tolist() == [len(prompt_ids) - 1 + j for j in range(len(target_ids))]
        assert batch.labels[at].tolist() == target_ids
        assert ids[row, batch.cols[at] + 1].tolist() == target_ids
    assert len(batch.labels) == sum(len(t) for _, t in pairs)


def test_edit_batch_is_prompt_then_target_new(tiny):
    cases = [EditCase("a", "{} is the capital of", "Paris", "Rome", "France"),
             EditCase("b", "{} was born in", "Mozart", "Berlin", "Salzburg")]
    a, b = edit_batch(tiny, cases), target_batch(tiny, ["Paris is the capital of", "Mozart was born in"],
                                                 ["Rome", "Berlin"])
    assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols) and torch.equal(a.labels, b.labels)


def test_batched_nll_and_logprobs_equal_the_naive_per_pair_values(tiny):
    batch = target_batch(tiny, PROMPTS, TARGETS)
    with torch.no_grad():
        logits = tiny.model(**batch.inputs).logits
    naive = [naive_token_logprobs(tiny, p, t) for p, t in zip(PROMPTS, TARGETS)]
    mean_nll = torch.stack([-lp.mean() for lp in naive])
    assert float(batch.nll(logits)) == pytest.approx(float(mean_nll.mean()), rel=1e-5)
    assert float(batch.nll(logits, reduction="sum")) == pytest.approx(float(mean_nll.sum()), rel=1e-5)
    assert batch.target_logprobs(logits) == pytest.approx([float(lp.sum()) for lp in naive], rel=1e-5)
    assert target_logprobs(tiny, PROMPTS[1], TARGETS) == pytest.approx(
        [float(naive_token_logprobs(tiny, PROMPTS[1], t).sum()) for t in TARGETS], rel=1e-5)


# --- bitwise the numbers of the code these batches replaced ------------------------------------

def old_efficacy_logprobs(mue, prompt: str, targets: list[str]) -> list[float]:
    """metrics/efficacy.py's target_logprobs before editguard.tokens."""
    tok = mue.tokenizer
    prompt_ids = tok(prompt)["input_ids"]
    target_ids = [tok(" " + t, add_special_tokens=False)["input_ids"] for t in targets]
    with torch.no_grad():
        logits = mue.model(**mue.pad_batch([prompt_ids + t for t in target_ids])).logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    out = []
    for row, t in enumerate(target_ids):
        positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(t), device=mue.device)
        out.append(float(log_probs[row, positions, torch.tensor(t, device=mue.device)].sum()))
    return out


def old_ft_mean_nll(mue, batch: TokenBatch) -> torch.Tensor:
    """editors/ft.py's edit loss before editguard.tokens (no clamp on the token counts)."""
    counts = torch.bincount(batch.rows, minlength=batch.n).float()
    logits = mue.model(**batch.inputs).logits[batch.rows, batch.cols].float()
    token_nll = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="none")
    return (torch.zeros(batch.n, device=mue.device).index_add(0, batch.rows, token_nll) / counts).mean()


def test_efficacy_and_ft_losses_are_bitwise_unchanged(tiny):
    for prompt in PROMPTS:
        assert target_logprobs(tiny, prompt, TARGETS) == old_efficacy_logprobs(tiny, prompt, TARGETS)
    batch = target_batch(tiny, PROMPTS, TARGETS)
    with torch.no_grad():
        assert torch.equal(batch.nll(tiny.model(**batch.inputs).logits), old_ft_mean_nll(tiny, batch))


def test_a_prompt_beyond_the_edit_limit_is_refused_with_its_length(tiny):
    from editguard.cases import CaseError, EditCase
    from editguard.tokens import MAX_EDIT_TOKENS, check_case_fits

    check_case_fits(tiny, EditCase("ok", "{} is the capital of", "Paris", "Rome"))
    long_prompt = "word " * 3000 + "{} is the capital of"
    with pytest.raises(CaseError, match=rf"case huge: prompt \+ target_new is \d+ tokens on {tiny.name}; an edit "
                                        rf"accepts at most {MAX_EDIT_TOKENS}"):
        check_case_fits(tiny, EditCase("huge", long_prompt, "Paris", "Rome"))
