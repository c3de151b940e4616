"""How many context templates does the prescreen need? k̄ is a Monte-Carlo mean over random
prefixes; this compares the denominator ratio from subsets of ROME's templates with the one from
all of them (Spearman rank correlation and the overlap of the 100 riskiest) on CounterFact cases.

    python bench/screen_templates.py --cases 2000
"""

import argparse
import json
import time
from pathlib import Path

import torch

from editguard.cases import load_counterfact
from editguard.editors.keys import context_templates
from editguard.editors.rome import RomeHparams
from editguard.models.loading import load_model
from editguard.screen import _head, _template_keys
from editguard.stats import spearman


class _Quiet:
    def advance(self, n):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="bench/results/screen_templates.json")
    args = ap.parse_args()
    mue = load_model(args.model)
    hp = RomeHparams.for_family(mue.family.name)
    layer = mue.edit_layer
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    cases = load_counterfact(args.data)
    step = max(1, len(cases) // args.cases)
    cases = cases[::step][: args.cases]
    heads = sorted({_head(c) for c in cases})
    module = mue.module(mue.family.rewrite.format(layer))
    width = mue.rewrite_matrix(layer).shape[1]
    per_template, seconds = [], []
    for t in templates:
        clock = time.perf_counter()
        per_template.append(_template_keys(mue, module, width, t, heads, 96, _Quiet()))
        seconds.append(time.perf_counter() - clock)
    keys = torch.stack(per_template)  # (templates, heads, width)
    plain = keys[0]

    def ratio(subset):
        k_bar = keys[subset].mean(0)
        return ((k_bar * plain).sum(1) / (k_bar * k_bar).sum(1)).tolist()

    full = ratio(list(range(len(templates))))
    top_full = set(sorted(range(len(heads)), key=lambda i: abs(full[i]))[:100])
    n_gen = len(templates) - 1
    subsets = {
        "all": list(range(len(templates))),
        "{} + 10 short": [0] + list(range(1, 1 + n_gen // 2)),
        "{} + 10 long": [0] + list(range(1 + n_gen // 2, len(templates))),
        "{} + 5 short + 5 long (every other)": [0] + list(range(1, len(templates), 2)),
        "{} + 2 short + 2 long": [0, 1, 2, 1 + n_gen // 2, 2 + n_gen // 2],
    }
    rows = []
    for name, subset in subsets.items():
        r = ratio(subset)
        top = set(sorted(range(len(heads)), key=lambda i: abs(r[i]))[:100])
        row = {"subset": name, "templates": len(subset), "spearman_vs_all": spearman(r, full),
               "top100_overlap": len(top & top_full),
               "seconds_per_1000_keys": sum(seconds[i] for i in subset) / len(heads) * 1000}
        rows.append(row)
        print(f"{name:40s} n={len(subset):2d}  spearman {row['spearman_vs_all']:.4f}  "
              f"top-100 overlap {row['top100_overlap']:3d}"
              f"  {row['seconds_per_1000_keys']:.1f} s / 1000 keys")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "layer": layer, "cases": len(cases), "keys": len(heads),
                                          "subsets": rows}, indent=1))


if __name__ == "__main__":
    main()
