"""The BOS rule of ME-PPL (--ppl-bos): by default none on every model family, as the papers
computed it; `tokenizer` follows the tokenizer's own convention; the guard measures edited
models with the baseline's rule."""

import dataclasses

import pytest

from editguard import load_model
from editguard.cases import EditCase
from editguard.guard import check, measure_baseline
from editguard.metrics.perplexity import add_bos_for, perplexity
from editguard.models.tiny import byte_tokenizer
from editguard.options import OPTIONS_BY_NAME, PPL_BOS_CHOICES
from tests.test_perplexity_naive import SENTENCES, naive
from tests.toy_editors import ScaleRowEditor


@pytest.fixture(scope="module")
def llama_with_bos():
    """tiny-llama behind a Llama-2-like tokenizer that puts `<s>` before every text."""
    mue = load_model("tiny-llama")
    tok = byte_tokenizer(add_bos=True)
    assert tok("a")["input_ids"][0] == tok.bos_token_id != mue.tokenizer.bos_token_id
    return dataclasses.replace(mue, name="tiny-llama-bos", tokenizer=tok, fingerprint=mue.fingerprint + "-bos",
                               _modules={})


def test_the_default_is_the_papers_rule_except_where_a_model_registers_its_own():
    from editguard.models.registry import ppl_bos_for

    assert OPTIONS_BY_NAME["ppl-bos"].default is None  # resolved per model by ppl_bos_for
    assert PPL_BOS_CHOICES == ("never", "tokenizer", "always")
    assert ppl_bos_for("smollm2-135m") == ppl_bos_for("tiny-llama") == ppl_bos_for("/some/dir") == "never"
    assert ppl_bos_for("gemma3-270m") == "tokenizer"  # Gemma is only ever run after its BOS
    assert ppl_bos_for("gemma3-270m", "never") == "never"  # an explicit rule wins


@pytest.mark.parametrize("tokens_per_batch", [32, 8192], ids=["many-batches", "one-batch"])
def test_default_has_no_bos_and_tokenizer_rule_has_the_tokenizers(llama_with_bos, tokens_per_batch):
    mue = llama_with_bos
    no_special = naive(mue, SENTENCES)   # add_special_tokens=False, nothing prepended
    with_bos = naive(mue, SENTENCES, bos=True)
    default = perplexity(mue, SENTENCES, tokens_per_batch=tokens_per_batch)
    assert default.bos == "never"
    assert (default.ppl, default.corpus_ppl) == pytest.approx(no_special[:2], rel=1e-4)
    assert default.per_sentence == pytest.approx(no_special[2], rel=1e-4)
    for rule in ("tokenizer", "always"):
        result = perplexity(mue, SENTENCES, bos=rule, tokens_per_batch=tokens_per_batch)
        assert result.bos == rule
        assert (result.ppl, result.corpus_ppl) == pytest.approx(with_bos[:2], rel=1e-4)
    assert with_bos[0] != pytest.approx(no_special[0], rel=1e-3)


def test_the_rule_per_tokenizer(llama_with_bos):
    plain = load_model("tiny-llama")   # byte tokenizer: adds nothing by itself
    assert [add_bos_for(rule, plain) for rule in PPL_BOS_CHOICES] == [False, False, True]
    assert [add_bos_for(rule, llama_with_bos) for rule in PPL_BOS_CHOICES] == [False, True, True]
    with pytest.raises(ValueError, match="--ppl-bos must be one of never, tokenizer, always, got 'sometimes'"):
        add_bos_for("sometimes", plain)


@pytest.mark.parametrize("shared", [False, True], ids=["in-memory", "disk-cache"])
def test_baseline_and_edited_measurement_share_the_rule(llama_with_bos, shared, private_cache):
    mue = llama_with_bos
    by_rule = {rule: measure_baseline(mue, SENTENCES, "toy", shared=shared, bos=rule) for rule in PPL_BOS_CHOICES}
    assert by_rule["never"].ppl.ppl == pytest.approx(naive(mue, SENTENCES)[0], rel=1e-4)
    assert by_rule["tokenizer"].ppl.ppl == pytest.approx(naive(mue, SENTENCES, bos=True)[0], rel=1e-4)
    assert by_rule["tokenizer"].ppl.ppl != pytest.approx(by_rule["never"].ppl.ppl, rel=1e-3)  # not one cache entry
    case = EditCase("b1", "{} is the capital of", "Paris", "Rome", "France")
    for rule in ("never", "tokenizer"):
        baseline = by_rule[rule]
        assert baseline.ppl_bos == rule
        # An edit that changes nothing: the edited perplexity is the baseline's, under the same rule.
        result = check(mue, ScaleRowEditor({"factor": 1.0}), case, baseline)
        assert result.ppl == pytest.approx(baseline.ppl.ppl, rel=1e-6)
