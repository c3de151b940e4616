"""Collapse-risk prescreen: what predicts ROME's blow-up, from forward passes alone.

ROME's update divides by (C⁻¹k̄)ᵀkᵘ. Relative to the consistent value (C⁻¹k̄)ᵀk̄ this
*denominator ratio* is ≈ 1 for ordinary cases and near 0 when the unprefixed key kᵘ is far
from the prefix-averaged k̄ (a subject that is the prompt's first token). The screen computes
k̄ and kᵘ for every case without optimising v*, so it ranks all of CounterFact in minutes.

Cost savers, none of which changes the numbers beyond float rounding:
- keys depend only on the text up to the subject's last token (causal attention), so cases
  sharing that head are computed once;
- each context template's prefix is run once and its key/value cache reused by every head;
- the forward pass stops at the edited layer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch

from editguard.cases import EditCase
from editguard.models.forward import cache_kwargs, inputs_until
from editguard.models.loading import ModelUnderEdit
from editguard.progress import progress_bar

__all__ = ["DEFAULT_SCREEN_TEMPLATES", "RiskRow", "risk_score", "run_screen", "screen_cases", "screen_setup",
           "template_subset", "write_screen"]

# k̄ is a Monte-Carlo mean over random prefixes; 11 of ROME's 21 templates rank CounterFact
# like all 21 (Spearman 0.996 on 2,000 cases, bench/screen_templates.py) at half the cost.
DEFAULT_SCREEN_TEMPLATES = 11


@dataclass(frozen=True)
class RiskRow:
    case_id: str
    subject: str
    prompt: str
    subject_first: bool
    subject_tokens: int
    key_cosine: float          # cos(k̄, kᵘ)
    key_rel_distance: float    # ‖kᵘ − k̄‖ / ‖k̄‖
    denominator_ratio: float   # (C⁻¹k̄)ᵀkᵘ / (C⁻¹k̄)ᵀk̄, C⁻¹ only with mom2_adjustment
    risk: float                # −log10 |denominator ratio|: ROME's ΔW scales with its inverse

    def to_json(self) -> dict:
        return asdict(self)


def risk_score(denominator_ratio: float) -> float:
    return -math.log10(max(abs(denominator_ratio), 1e-12))


def _head(case: EditCase) -> str:
    """The prompt up to the subject's end: all that the key at the subject's last token sees."""
    return case.prompt[: case.prompt.index("{}")] + case.subject


@torch.no_grad()
def _last_token_keys(mue: ModelUnderEdit, module: torch.nn.Module, sequences: list[list[int]],
                     prefix_cache=None, prefix_len: int = 0) -> torch.Tensor:
    """Keys at each sequence's last token; with a cache, sequences continue that prefix."""
    enc = mue.pad_batch(sequences)
    lengths = enc["attention_mask"].sum(1)
    kwargs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    if prefix_cache is not None:
        n, width = enc["input_ids"].shape
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(n)
        ones = torch.ones(n, prefix_len, dtype=enc["attention_mask"].dtype, device=mue.device)
        kwargs["attention_mask"] = torch.cat([ones, enc["attention_mask"]], dim=1)
        kwargs["position_ids"] = (prefix_len + torch.arange(width, device=mue.device)).expand(n, width)
        kwargs.update(cache_kwargs(mue, cache))
    keys = inputs_until(mue, module, **kwargs)
    return keys[torch.arange(len(sequences), device=mue.device), lengths - 1].float()


@torch.no_grad()
def _prefix_cache(mue: ModelUnderEdit, ids: list[int]):
    out = mue.model.base_model(input_ids=torch.tensor([ids], device=mue.device), use_cache=True)
    return getattr(out, "cache", None) or out.past_key_values


def _template_keys(mue: ModelUnderEdit, module: torch.nn.Module, width: int, template: str,
                   heads: list[str], batch_size: int, bar) -> torch.Tensor:
    """Keys at each head's last token behind `template`'s prefix, as ROME tokenizes it."""
    tok = mue.tokenizer
    prefix = template[: template.index("{}")]
    full = tok([prefix + h for h in heads])["input_ids"]
    cached_ids = tok(prefix.rstrip())["input_ids"] if prefix.strip() else []
    n_cached = len(cached_ids)
    # Heads whose tokenization starts with the cached prefix continue it; the rest (a BPE merge
    # across the boundary) run whole.
    continues = [n_cached > 0 and seq[:n_cached] == cached_ids and len(seq) > n_cached for seq in full]
    cache = _prefix_cache(mue, cached_ids) if any(continues) else None
    keys = torch.empty(len(heads), width)
    for use_cache in (True, False):
        rows = [i for i, c in enumerate(continues) if c == use_cache]
        rows.sort(key=lambda i: len(full[i]))  # similar lengths together: little padding
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            if use_cache:
                seqs = [full[i][n_cached:] for i in chunk]
                keys[chunk] = _last_token_keys(mue, module, seqs, cache, n_cached).cpu()
            else:
                keys[chunk] = _last_token_keys(mue, module, [full[i] for i in chunk]).cpu()
            bar.advance(len(chunk))
    return keys


def screen_cases(mue: ModelUnderEdit, cases: list[EditCase], layer: int, templates: list[str],
                 inverse_mom2: torch.Tensor | None = None, batch_size: int = 256,
                 progress: bool = True) -> list[RiskRow]:
    """A RiskRow per case, ranked riskiest first. `templates` are ROME's context templates
    ("{}" and the generated prefixes); `inverse_mom2` is C⁻¹ when the editor uses it."""
    module = mue.module(mue.family.rewrite.format(layer))
    heads = sorted({_head(c) for c in cases})
    index = {h: i for i, h in enumerate(heads)}
    width = mue.rewrite_matrix(layer).shape[1]
    key_sum = torch.zeros(len(heads), width)
    plain = None
    with progress_bar(f"screen {len(cases)} cases ({len(heads)} keys × {len(templates)} templates)",
                      len(heads) * len(templates), enabled=progress) as bar:
        for template in templates:
            keys = _template_keys(mue, module, width, template, heads, batch_size, bar)
            key_sum += keys
            if template == "{}":
                plain = keys
    if plain is None:
        raise ValueError('context templates must include the unprefixed "{}"')
    k_bar = key_sum / len(templates)
    left = k_bar if inverse_mom2 is None else k_bar @ inverse_mom2.T.cpu()
    ratio = (left * plain).sum(1) / (left * k_bar).sum(1)
    cosine = torch.nn.functional.cosine_similarity(k_bar, plain, dim=1)
    rel = (plain - k_bar).norm(dim=1) / k_bar.norm(dim=1)
    n_subject_tokens = [len(ids) for ids in
                        mue.tokenizer([c.subject for c in cases], add_special_tokens=False)["input_ids"]]
    rows = []
    for case, n_tok in zip(cases, n_subject_tokens):
        i = index[_head(case)]
        r = float(ratio[i])
        rows.append(RiskRow(case.case_id, case.subject, case.prompt, case.subject_first, n_tok,
                            float(cosine[i]), float(rel[i]), r, risk_score(r)))
    rows.sort(key=lambda row: -row.risk)
    return rows


def template_subset(templates: list[str], n: int | None) -> list[str]:
    """"{}" plus n − 1 generated templates spread evenly over the list (all when n is None)."""
    if n is None or n >= len(templates):
        return list(templates)
    if n < 2:
        raise ValueError(f"the screen needs at least 2 templates (the unprefixed one and a prefix), got {n}")
    generated = templates[1:]
    picks = [round(i * len(generated) / (n - 1)) for i in range(n - 1)]
    return [templates[0]] + [generated[i] for i in picks]


def screen_setup(mue: ModelUnderEdit, hparams, n_templates: int | None = DEFAULT_SCREEN_TEMPLATES,
                 data_dir=None) -> dict:
    """What a screen with ROME's hyperparameters computes once, whatever the cases: the layer, the
    context templates used (of how many), C⁻¹ where the editor adjusts by it."""
    from editguard.editors.covariance import inverse_layer_second_moment
    from editguard.editors.keys import context_templates

    layer = hparams.layer if hparams.layer is not None else mue.edit_layer
    templates = context_templates(mue, hparams.context_template_length_params, hparams.template_seed)
    inverse = None
    if hparams.mom2_adjustment:
        inverse = inverse_layer_second_moment(mue, layer, hparams.mom2_corpus, hparams.mom2_n_tokens, data_dir)
    return {"layer": layer, "templates": template_subset(templates, n_templates),
            "templates_total": len(templates), "mom2_adjustment": hparams.mom2_adjustment, "inverse": inverse}


def run_screen(mue: ModelUnderEdit, cases: list[EditCase], hparams, n_templates: int | None = DEFAULT_SCREEN_TEMPLATES,
               data_dir=None, batch_size: int = 96, progress: bool = True) -> dict:
    """Screen `cases` with ROME's hyperparameters (layer, templates, mom2 adjustment); a JSON-able
    document with the ranked rows and how they were computed."""
    import time

    setup = screen_setup(mue, hparams, n_templates, data_dir)
    clock = time.perf_counter()
    rows = screen_cases(mue, cases, setup["layer"], setup["templates"], setup["inverse"], batch_size=batch_size,
                        progress=progress)
    return {
        "model": mue.name, "fingerprint": mue.fingerprint, "layer": setup["layer"],
        "templates": len(setup["templates"]), "templates_total": setup["templates_total"],
        "mom2_adjustment": setup["mom2_adjustment"], "n_cases": len(cases),
        "seconds": time.perf_counter() - clock,
        "rows": [row.to_json() for row in rows],
    }


def write_screen(doc: dict, json_path) -> tuple:
    """The screen document as JSON and, beside it, its rows as CSV."""
    import csv
    import json
    from pathlib import Path

    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    csv_path = json_path.with_suffix(".csv")
    columns = [f.name for f in RiskRow.__dataclass_fields__.values()]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["rank", *columns])
        writer.writeheader()
        for rank, row in enumerate(doc["rows"], 1):
            writer.writerow({"rank": rank, **row})
    return json_path, csv_path
