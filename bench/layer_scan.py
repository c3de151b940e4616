"""Which layer shows the first-token key anomaly? Forward passes only (run on demand).

    python bench/layer_scan.py [--cases 12]

For subject-first one-token cases and subject-inside cases, prints per layer the mean
cos(k̄, kᵘ) and the mean denominator ratio k̄ᵀkᵘ / k̄ᵀk̄ (mom2 off, as the papers ran ROME).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from editguard import load_model
from editguard.cases import load_counterfact
from editguard.editors.keys import context_templates, encode_batch, fill, subject_last_index
from editguard.editors.rome import RomeHparams
from editguard.suites import hardcf_candidates, normal_cases


def layer_stats(mue, cases, templates):
    """Per layer: cos(k̄, kᵘ) and k̄ᵀkᵘ/k̄ᵀk̄ for each case, all layers from one batched forward."""
    cos = {layer: [] for layer in range(mue.n_layers)}
    ratio = {layer: [] for layer in range(mue.n_layers)}
    for case in cases:
        filled = [fill(t, case.prompt) for t in templates]
        idx = torch.tensor([subject_last_index(mue.tokenizer, t, case.subject) for t in filled])
        seen = {}
        hooks = [mue.module(mue.family.rewrite.format(layer)).register_forward_hook(
                     lambda _m, args, _o, layer=layer: seen.__setitem__(layer, args[0][torch.arange(len(idx)), idx]))
                 for layer in range(mue.n_layers)]
        try:
            with torch.no_grad():
                mue.model(**encode_batch(mue, [fill(t, case.subject) for t in filled]))
        finally:
            for h in hooks:
                h.remove()
        for layer, keys in seen.items():
            k_bar, k_u = keys.mean(0), keys[0]  # template 0 is "{}": the unprefixed prompt
            cos[layer].append(float(torch.nn.functional.cosine_similarity(k_bar, k_u, dim=0)))
            ratio[layer].append(float(k_bar @ k_u / (k_bar @ k_bar)))
    return cos, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    args = parser.parse_args()
    mue = load_model(args.model)
    hp = RomeHparams.for_family(mue.family.name)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    all_cases = load_counterfact(args.data)
    first = hardcf_candidates(all_cases, mue.tokenizer)[: args.cases]
    inside = normal_cases(all_cases)[: args.cases]
    cos_f, ratio_f = layer_stats(mue, first, templates)
    cos_i, ratio_i = layer_stats(mue, inside, templates)
    print(f"{'layer':>5} {'cos first':>10} {'cos inside':>11} {'ratio first':>12} {'ratio inside':>13}")
    for layer in range(mue.n_layers):
        print(f"{layer:>5} {statistics.mean(cos_f[layer]):>10.3f} {statistics.mean(cos_i[layer]):>11.3f} "
              f"{statistics.mean(ratio_f[layer]):>12.3f} {statistics.mean(ratio_i[layer]):>13.3f}")


if __name__ == "__main__":
    main()
