"""Downstream probes scored as EleutherAI's lm-evaluation-harness scores them (tasks: editguard.tasks).

One log-likelihood path serves every multiple-choice task and LAMBADA: each (context,
continuation) pair is tokenized as lm-evaluation-harness does (encode context + continuation
whole, split at the context's token count), pairs are sorted by length and packed into
right-padded batches, and logits are computed only where a continuation token is predicted.
Generation tasks decode greedily with a KV cache (transformers' generate, left padding).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field, replace

import torch

from editguard.cache import cache_dir, cache_key, cached_json, safe_name
from editguard.metrics.lm_eval import TaskScore, original_sizes, score_record
from editguard.metrics.perplexity import add_bos_for
from editguard.models.loading import ModelUnderEdit
from editguard.models.precision import precision_context, resolve_precision
from editguard.tasks import (
    GENERATION,
    LAST_WORD,
    GenItem,
    MCItem,
    Task,
    exact_match,
    get_task,
    lm_eval_exact_match,
    squad2_metrics,
)

# Bump when scoring changes what it computes: cached unedited scores of older code are then ignored.
SCORER_VERSION = 5

# --- tokenization and the shared log-likelihood path ------------------------------------------

def encode_pair(tok, context: str, continuation: str, add_bos: bool = False) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: trailing spaces of the context move to the continuation,
    the whole text is encoded once, the continuation is what follows the context's token count."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tok(context, add_special_tokens=False)["input_ids"]
    prefix = [tok.bos_token_id] if add_bos else []
    if not context_ids and not prefix:   # nothing to condition on: start from end-of-text, as lm-eval
        prefix = [tok.eos_token_id]
    return prefix + context_ids, whole[len(context_ids):]


def _max_length(mue: ModelUnderEdit) -> int:
    config = mue.model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048


@torch.no_grad()
def loglikelihoods(mue: ModelUnderEdit, pairs: list[tuple[str, str]], *, tokens_per_batch: int = 1024,
                   share_context: bool = True, progress=None) -> list[tuple[float, bool]]:
    """(log P(continuation | context), every continuation token greedy) for each pair.

    Sequences longer than the model's window lose tokens from the left, as in lm-eval. With
    `share_context`, the choices of one context share its forward pass: one-token continuations
    (MMLU's " A".." D") are read from the context's last position, longer ones (HellaSwag's
    endings) run on top of the context's key/value cache. Same tokens, same numbers (to float
    rounding) as one pass per pair, and a fraction of the work.
    """
    # BOS as lm-eval adds it: the tokenizer's own convention, whatever --ppl-bos says for ME-PPL.
    tok, add_bos, max_len = mue.tokenizer, add_bos_for("tokenizer", mue), _max_length(mue)
    by_context: dict[tuple, list[tuple[int, list[int]]]] = {}
    for i, (context, continuation) in enumerate(pairs):
        ctx, cont = encode_pair(tok, context, continuation, add_bos)
        if not cont:
            raise ValueError(f"pair {i}: the continuation {continuation!r:.40} encodes to no tokens")
        by_context.setdefault(tuple(ctx), []).append((i, cont))
    # Plain rows: a token sequence and, per request it serves, (request, first scored position, targets).
    plain: list[tuple[list[int], list[tuple[int, int, list[int]]]]] = []
    shared: list[tuple[list[int], list[tuple[int, list[int]]]]] = []
    for ctx, requests in by_context.items():
        longest = max(len(c) for _, c in requests)
        if share_context and longest == 1:
            seq = list(ctx[-max_len:])
            plain.append((seq, [(i, len(seq) - 1, c) for i, c in requests]))
        elif (share_context and len(requests) > 1 and len(ctx) + longest <= max_len
              and sharing_pays(len(ctx), [len(c) for _, c in requests])):
            shared.append((list(ctx), requests))
        else:
            for i, cont in requests:
                seq = (list(ctx) + cont)[-(max_len + 1):][:-1]   # the last token is only predicted
                plain.append((seq, [(i, len(seq) - len(cont), cont)]))
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    head = mue.model.get_output_embeddings()

    def score(states: torch.Tensor, owners: list[tuple[int, list[int]]]) -> None:
        logprobs = torch.log_softmax(head(states).float(), dim=-1)
        offset = 0
        for request, targets in owners:
            lp = logprobs[offset : offset + len(targets)]
            target = torch.tensor(targets, device=lp.device)
            results[request] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
            offset += len(targets)
        if progress is not None:
            progress(len(owners))

    # Longest first, as lm-eval: a batch's memory peak shows at once.
    plain.sort(key=lambda row: -len(row[0]))
    for batch in _batches(plain, lambda row: len(row[0]), tokens_per_batch):
        hidden = mue.model.base_model(**mue.pad_batch([seq for seq, _ in batch])).last_hidden_state
        picks = [hidden[r, first : first + len(t)] for r, (_, reqs) in enumerate(batch) for _, first, t in reqs]
        score(torch.cat(picks), [(i, t) for _, reqs in batch for i, _, t in reqs])

    # The continuations' pass dominates and pads to the batch's longest continuation: sort by it.
    def longest_cont(g):
        return max(len(c) for _, c in g[1])

    shared.sort(key=lambda g: (-longest_cont(g), -len(g[0])))

    def cost(g):
        return len(g[0]) + len(g[1]) * longest_cont(g)

    for batch in _batches(shared, cost, tokens_per_batch):
        _score_on_shared_contexts(mue, batch, score)
    return results  # type: ignore[return-value]


# A shared context costs a second forward pass and pads each of its continuations to the longest.
# On PIQA (--limit 100, smollm2-135m, float32, AMD EPYC 2 cores), where sharing saved about no
# tokens, it took 45.3 CPU s against 38.8 s for one pass per pair: a context is shared only where
# that saves at least 30 % of the tokens (most HellaSwag items; few PIQA items).
SHARE_MAX_TOKEN_RATIO = 0.7


def sharing_pays(context: int, continuations: list[int]) -> bool:
    """Whether one context pass plus its continuations, each padded to the longest, costs at most
    SHARE_MAX_TOKEN_RATIO of the tokens of one (context + continuation) pass per pair."""
    shared = context + len(continuations) * max(continuations)
    return shared <= SHARE_MAX_TOKEN_RATIO * sum(context + c for c in continuations)


def _batches(rows: list, size, tokens_per_batch: int):
    """Consecutive runs of rows whose padded size (rows × the first row's size) fits the budget."""
    start = 0
    while start < len(rows):
        end, width = start + 1, size(rows[start])
        while end < len(rows) and (end + 1 - start) * width <= tokens_per_batch:
            end += 1
        yield rows[start:end]
        start = end


def _cache_argument(mue: ModelUnderEdit) -> str:
    # transformers renamed forward's `past_key_values` to `cache` (5.x); use whichever it takes.
    import inspect

    return "cache" if "cache" in inspect.signature(mue.model.base_model.forward).parameters else "past_key_values"


def _score_on_shared_contexts(mue: ModelUnderEdit, groups, score) -> None:
    """Contexts run once (right-padded, with a key/value cache); each continuation then runs on a
    copy of its context's cache, with the context's padding masked and positions continuing
    after the context's real tokens."""
    contexts = [ctx for ctx, _ in groups]
    enc = mue.pad_batch(contexts)
    out = mue.model.base_model(**enc, use_cache=True)
    ctx_hidden = out.last_hidden_state
    cache = getattr(out, "cache", None) or out.past_key_values
    owner_ctx = [g for g, (_, requests) in enumerate(groups) for _ in requests]
    conts = [cont for _, requests in groups for _, cont in requests]
    index = torch.tensor(owner_ctx, device=mue.device)
    cache.batch_select_indices(index)
    cont_enc = mue.pad_batch(conts)
    lengths = torch.tensor([len(c) for c in contexts], device=mue.device)[index]
    positions = lengths[:, None] + torch.arange(cont_enc["input_ids"].shape[1], device=mue.device)[None]
    mask = torch.cat([enc["attention_mask"][index], cont_enc["attention_mask"]], dim=1)
    hidden = mue.model.base_model(input_ids=cont_enc["input_ids"], attention_mask=mask, position_ids=positions,
                                  use_cache=True, **{_cache_argument(mue): cache}).last_hidden_state
    picks, owners, row = [], [], 0
    for g, (ctx, requests) in enumerate(groups):
        for i, cont in requests:
            # The context's last real position predicts the first token; the continuation's own
            # positions predict the rest.
            picks.append(torch.cat([ctx_hidden[g, len(ctx) - 1 : len(ctx)], hidden[row, : len(cont) - 1]]))
            owners.append((i, cont))
            row += 1
    score(torch.cat(picks), owners)


def score_choices(items: list[MCItem], lls: list[tuple[float, bool]]) -> tuple[list[int], list[int]]:
    """Predicted choice per item by acc (argmax log P) and by acc_norm (argmax log P / characters)."""
    acc, norm, k = [], [], 0
    for item in items:
        ll = [lp for lp, _ in lls[k : k + len(item.choices)]]
        k += len(item.choices)
        acc.append(max(range(len(ll)), key=lambda j: ll[j]))
        lengths = item.norm_lengths or tuple(len(c) for c in item.choices)
        norm.append(max(range(len(ll)), key=lambda j: ll[j] / lengths[j]))
    return acc, norm


# --- greedy generation ---------------------------------------------------------------------------

class _StopOnStrings:
    """Stops a batch once every row's new text holds a stop string (or ended)."""

    def __init__(self, tok, prompt_width: int, stop: tuple[str, ...]):
        self.tok, self.width, self.stop = tok, prompt_width, stop

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tok.batch_decode(input_ids[:, self.width:], skip_special_tokens=False)
        eos = self.tok.eos_token or "\0"
        return torch.tensor([any(s in t for s in self.stop) or eos in t for t in texts], device=input_ids.device)


@torch.no_grad()
def greedy_generate(mue: ModelUnderEdit, prompts: list[str], *, max_new_tokens: int = 256,
                    stop: tuple[str, ...] = ("\n",), batch_size: int = 32, progress=None) -> list[str]:
    """Greedy continuations, each cut at its first stop string (lm-eval's `until`, to which lm-eval's
    HF backend adds the end-of-text token: generation stops there too)."""
    from transformers import GenerationConfig, StoppingCriteriaList

    tok, add_bos = mue.tokenizer, add_bos_for("tokenizer", mue)
    limit = _max_length(mue) - max_new_tokens
    encoded = [([tok.bos_token_id] if add_bos else []) + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    encoded = [ids[-limit:] for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):   # left padding: every row's next token comes at the same column
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        generated = mue.model.generate(
            input_ids=ids.to(mue.device), attention_mask=mask.to(mue.device), generation_config=config,
            stopping_criteria=StoppingCriteriaList([_StopOnStrings(tok, width, stop)]),
        )
        for row, i in enumerate(chunk):
            text = tok.decode(generated[row, width:], skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0]
            out[i] = text
        if progress is not None:
            progress(len(chunk))
    return out


# --- one task on one model ------------------------------------------------------------------------

def subset(items: list, n: int | None, seed: int = 0, task: str = "") -> list[int]:
    """Indices of a seeded, fixed subset of n items in file order (all items when n is None or ≥ len)."""
    if n is None or n >= len(items):
        return list(range(len(items)))
    return sorted(random.Random(f"{task}:{seed}").sample(range(len(items)), n))


def first_n(items: list, limit: int | None) -> list[int]:
    """Indices of the first `limit` items, as lm-eval's --limit takes them: per subtask, so MMLU's
    first `limit` questions of each subject (all items when limit is None)."""
    if limit is None:
        return list(range(len(items)))
    taken: dict[str, int] = {}
    out = []
    for i, item in enumerate(items):
        group = getattr(item, "group", "")
        if taken.get(group, 0) < limit:
            taken[group] = taken.get(group, 0) + 1
            out.append(i)
    return out


def pick_items(items: list, task: str, n: int | None = None, seed: int = 0, limit: int | None = None) -> list[int]:
    """The items a run scores: the first `limit` (lm-eval's --limit) when limit is given, else a
    seeded subset of n."""
    if limit is not None and n is not None:
        raise ValueError("give either a first-N limit or a seeded subset size, not both")
    return first_n(items, limit) if limit is not None else subset(items, n, seed, task)


def evaluate(mue: ModelUnderEdit, task: Task | str, items: list, progress=None,
             tokens_per_batch: int = 1024, precision: str = "auto") -> TaskScore:
    """Score `items` of `task` on the model as it is now (edited or not), in `precision`
    (see `resolve_precision`). Small batches are faster on CPU: less padding, shorter attention."""
    task = get_task(task) if isinstance(task, str) else task
    precision = resolve_precision(mue, precision, "downstream precision")
    with precision_context(mue, precision):
        score = _evaluate(mue, task, items, progress, tokens_per_batch)
    return replace(score, extra={**score.extra, "precision": precision})


def _evaluate(mue: ModelUnderEdit, task: Task, items: list, progress, tokens_per_batch: int) -> TaskScore:
    start = time.perf_counter()
    extra: dict = {}
    if task.kind == GENERATION:
        assert all(isinstance(i, GenItem) for i in items)
        predictions = greedy_generate(mue, [i.prompt for i in items], max_new_tokens=task.max_new_tokens,
                                      stop=task.stop, progress=progress)
        squad = [exact_match(p, i.answers) for p, i in zip(predictions, items)]
        if task.name == "squad2":
            # The official script's best_* need P(" unanswerable" | prompt), as lm-eval's squadv2 asks for it.
            lls = loglikelihoods(mue, [(i.prompt, " unanswerable") for i in items], tokens_per_batch=tokens_per_batch)
            extra["squad2"] = squad2_metrics(predictions, [i.answers for i in items], [math.exp(lp) for lp, _ in lls])
            extra["f1"] = extra["squad2"].get("f1", 0.0) / 100.0
            extra["unanswerable"] = sum(not i.answers for i in items)
            right = squad
        else:   # NQ-open: lm-eval's exact match; editguard's SQuAD-normalised one beside it, under its own name
            right = [lm_eval_exact_match(p, i.answers) for p, i in zip(predictions, items)]
            extra["exact_match_squad"] = sum(squad) / max(1, len(items))
        extra["examples"] = [{"prediction": p, "answers": list(i.answers)}
                             for p, i in list(zip(predictions, items))[:3]]
        extra["per_item"] = predictions
    else:
        pairs = [(i.context, c) for i in items for c in i.choices]
        step = (lambda n, k=len(items) / max(1, len(pairs)): progress(n * k)) if progress else None
        lls = loglikelihoods(mue, pairs, progress=step, tokens_per_batch=tokens_per_batch)
        if task.kind == LAST_WORD:
            right = [greedy for _, greedy in lls]
            extra["loglikelihoods"] = [lp for lp, _ in lls]
            # lm-eval's `perplexity,none` of lambada_openai: exp(−mean log P(last word | text)).
            extra["perplexity"] = math.exp(-sum(extra["loglikelihoods"]) / len(lls)) if lls else float("nan")
            extra["per_item"] = [int(g) for g in right]
        else:
            acc, norm = score_choices(items, lls)
            right_acc = [p == i.gold for p, i in zip(acc, items)]
            right_norm = [p == i.gold for p, i in zip(norm, items)]
            extra["acc"], extra["acc_norm"] = sum(right_acc) / len(items), sum(right_norm) / len(items)
            extra["per_item"] = [[a, b] for a, b in zip(acc, norm)]
            right = right_norm if task.metric == "acc_norm" else right_acc
            if any(i.group for i in items):   # MMLU: per subject [items, right by acc]
                groups: dict[str, list[int]] = {}
                for item, ok in zip(items, right_acc):
                    groups.setdefault(item.group, [0, 0])
                    groups[item.group][0] += 1
                    groups[item.group][1] += int(ok)
                extra["groups"] = groups
    return TaskScore(task.name, task.metric, len(items), int(sum(right)), task.random_baseline(items), extra,
                     time.perf_counter() - start)


# --- probes inside tests: fixed subsets, the unedited model's scores cached on disk ----------------

@dataclass
class DownstreamProbe:
    """Fixed subsets of the requested tasks and the unedited model's scores on them; `run`
    scores the model as it is now, `gates` judges those scores against the unedited ones."""

    items: dict[str, list]
    indices: dict[str, list[int]]
    unedited: dict[str, TaskScore]
    min_retention: float | None = None
    seed: int = 0
    precision: str = "auto"
    originals: dict[str, dict[str, int]] = field(default_factory=dict)   # full sizes, for lm-eval's n-samples

    def run(self, mue: ModelUnderEdit) -> dict[str, TaskScore]:
        return {name: evaluate(mue, name, items, precision=self.precision) for name, items in self.items.items()}

    def to_json(self, edited: dict[str, TaskScore]) -> dict:
        """Per task: the edited score (editguard's fields, its extras, lm-eval's keys) and the unedited
        model's under "unedited_score", both rebuildable with `TaskScore.from_record`."""
        return {name: {**score_record(s), "unedited": self.unedited[name].accuracy,
                       "unedited_score": score_record(self.unedited[name])}
                for name, s in edited.items()}


def _items_digest(items: list) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def unedited_score(mue: ModelUnderEdit, task: str, items: list, indices: list[int], seed: int,
                   precision: str = "auto") -> TaskScore:
    """The unedited model's score on a subset, computed once per (weights, dtype, device type,
    precision, task, subset, scorer version) and kept on disk under a file lock, so xdist workers and later sessions
    share it. Call only on the unedited model."""
    from editguard.models.snapshot import weight_digests

    digests = sorted(weight_digests(mue.model).items())
    precision = resolve_precision(mue, precision, "downstream precision")
    key = cache_key(SCORER_VERSION, mue.fingerprint, digests, str(mue.dtype), mue.device.type,
                    precision, task, seed, indices, _items_digest(items))

    def score() -> dict:
        result = evaluate(mue, task, items, precision=precision)
        return {**result.to_dict(), "model": mue.name, "indices_n": len(indices), "seed": seed}

    return TaskScore.from_dict(cached_json(cache_dir() / "downstream" / f"{safe_name(mue.name)}-{task}-{key}.json",
                                           score))


def prepare_probe(mue: ModelUnderEdit, tasks: list[str], n: int | None, data_dir=None, seed: int = 0,
                  min_retention: float | None = None, precision: str = "auto",
                  limit: int | None = None) -> DownstreamProbe:
    """Load each task, take its items (the first `limit`, lm-eval's --limit, when given; else a
    seeded subset of n), and score the unedited model on them (cached)."""
    items, indices, unedited, originals = {}, {}, {}, {}
    for name in tasks:
        everything = get_task(name).load(data_dir)
        originals[name] = original_sizes(everything)
        indices[name] = pick_items(everything, name, None if limit is not None else n, seed, limit)
        items[name] = [everything[i] for i in indices[name]]
        unedited[name] = unedited_score(mue, name, items[name], indices[name], seed, precision)
    return DownstreamProbe(items, indices, unedited, min_retention, seed,
                           resolve_precision(mue, precision, "downstream precision"), originals)
