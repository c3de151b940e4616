"""Which MLP layers carry a model's facts? Causal tracing (ROME §2, the measurement MEMIT's
critical layers come from), run on demand to choose MEMIT's layers for a model.

    python bench/causal_trace.py [--model smollm2-135m] [--facts 20] [--window 5] [--samples 8]

For facts the unedited model knows (normal CounterFact cases, subject inside the prompt, ranked by
P(true target)), the subject's input embeddings are corrupted with Gaussian noise (σ = 3 × the
embedding std, as ROME), then the clean MLP outputs at the subject's last token are restored for a
window of layers centred on each layer. The indirect effect of a layer is the mean of
P_restored(true target) − P_corrupted(true target) over facts and noise samples. MEMIT edits the
layers where the windowed effect is high: the run prints the table and the best band of `--width`
consecutive layers by mean effect among windows that leave out layer 0, whose MLP acts as a second
embedding (restoring it alone undoes most of the noise: run with `--window 1` to see it; MEMIT's
GPT-J and GPT-2 XL ranges leave it out too). `--keep-first-mlp` lets it compete.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from editguard.tracing import best_band, known_facts, noise_scale, trace_layers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=20, help="facts to trace (the best-known of --pool)")
    parser.add_argument("--pool", type=int, default=200, help="normal CounterFact cases to rank by P(true target)")
    parser.add_argument("--window", type=int, default=5, help="MLP layers restored around each layer")
    parser.add_argument("--width", type=int, default=5, help="layers MEMIT edits (the best window is printed)")
    parser.add_argument("--samples", type=int, default=8, help="noise samples per fact")
    parser.add_argument("--keep-first-mlp", action="store_true", help="let windows that restore layer 0 compete")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("-o", "--out", default=None)
    args = parser.parse_args()

    from editguard import load_model
    from editguard.cases import load_counterfact
    from editguard.suites import normal_cases

    if args.threads:
        torch.set_num_threads(args.threads)
    mue = load_model(args.model, "cpu")
    pool = normal_cases(load_counterfact(args.data))[: args.pool]
    facts = known_facts(mue, pool, args.facts)
    doc = trace_layers(mue, facts, args.window, args.samples)
    traces, effect = doc["facts"], doc["effect"]
    print(f"{mue.name}: {len(traces)} facts "
          f"(P(true) clean median {statistics.median(t['p_clean'] for t in traces):.3f}, "
          f"corrupted {statistics.median(t['p_corrupt'] for t in traces):.3f}), window {args.window}, "
          f"{args.samples} noise samples, σ = {noise_scale(mue):.4f}")
    print("layer  indirect effect of the MLP window")
    for layer, e in enumerate(effect):
        print(f"{layer:5d}  {e:+.4f}  {'#' * max(0, round(e / max(max(effect), 1e-9) * 40))}")
    best = best_band(effect, args.width, args.window, args.keep_first_mlp)
    print(f"best {args.width} consecutive layers by mean effect"
          f"{'' if args.keep_first_mlp else ' (windows without layer 0)'}: "
          f"{best}..{best + args.width - 1} "
          f"(mean {statistics.mean(effect[best : best + args.width]):+.4f}); "
          f"peak layer {max(range(len(effect)), key=effect.__getitem__)}")
    out = Path(args.out or f"bench/results/causal-trace-{mue.name}.json")
    out.write_text(json.dumps({"model": mue.name, "window": args.window, "samples": args.samples,
                               "noise_scale": doc["noise_scale"], "effect": effect, "best_start": best,
                               "width": args.width, "facts": traces}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
