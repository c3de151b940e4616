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

from editguard.editors.keys import encode_batch, fill, subject_last_index


def subject_span(tok, prompt: str, subject: str) -> tuple[int, int]:
    """[first, last] token indices of the subject in `fill(prompt, subject)`."""
    head = prompt[: prompt.index("{}")]
    first = len(tok(head)["input_ids"]) if head else len(tok("")["input_ids"])
    return first, subject_last_index(tok, prompt, subject)


@torch.no_grad()
def trace_fact(mue, case, window: int, samples: int, noise_scale: float, generator) -> dict:
    """P(true target's first token): clean, corrupted, and per layer with the MLP window restored."""
    tok, family = mue.tokenizer, mue.family
    text = fill(case.prompt, case.subject)
    first, last = subject_span(tok, case.prompt, case.subject)
    target = tok(" " + case.target_true, add_special_tokens=False)["input_ids"][0]
    enc = encode_batch(mue, [text] * samples)
    mlps = [mue.module(family.mlp.format(layer)) for layer in range(mue.n_layers)]

    clean_out = {}
    hooks = [m.register_forward_hook(
                 lambda mod, a, out, layer=layer: clean_out.__setitem__(layer, out[0, last].clone()))
             for layer, m in enumerate(mlps)]
    try:
        p_clean = mue.model(**encode_batch(mue, [text])).logits[0, -1].softmax(-1)[target].item()
    finally:
        for h in hooks:
            h.remove()

    embed = mue.model.get_input_embeddings()
    noise = torch.randn((samples, last - first + 1, embed.weight.shape[1]), generator=generator) * noise_scale

    def corrupt(_module, _args, out):
        out = out.clone()
        out[:, first : last + 1] += noise.to(out.dtype)
        return out

    def run(restore: list[int]) -> float:
        handles = [embed.register_forward_hook(corrupt)]
        for layer in restore:
            def put_back(_module, _args, out, layer=layer):
                out = out.clone()
                out[:, last] = clean_out[layer]
                return out
            handles.append(mlps[layer].register_forward_hook(put_back))
        try:
            probs = mue.model(**enc).logits[:, -1].softmax(-1)[:, target]
        finally:
            for h in handles:
                h.remove()
        return probs.mean().item()

    p_corrupt = run([])
    half = window // 2
    restored = [run(list(range(max(0, layer - half), min(mue.n_layers, layer - half + window))))
                for layer in range(mue.n_layers)]
    return {"case_id": case.case_id, "subject": case.subject, "p_clean": p_clean, "p_corrupt": p_corrupt,
            "restored": restored}


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
    tok = mue.tokenizer
    pool = normal_cases(load_counterfact(args.data))[: args.pool]
    with torch.no_grad():   # rank the pool by how well the model knows each fact
        known = []
        for case in pool:
            target = tok(" " + case.target_true, add_special_tokens=False)["input_ids"][0]
            logits = mue.model(**encode_batch(mue, [fill(case.prompt, case.subject)])).logits[0, -1]
            known.append((logits.softmax(-1)[target].item(), case))
    facts = [c for _, c in sorted(known, key=lambda pc: -pc[0])[: args.facts]]
    embed = mue.model.get_input_embeddings()
    # Gemma scales its embedding outputs by √hidden inside the module: the noise is sized on outputs.
    noise_scale = 3 * embed.weight.float().std().item() * float(getattr(embed, "embed_scale", 1.0))
    generator = torch.Generator().manual_seed(0)
    traces = [trace_fact(mue, c, args.window, args.samples, noise_scale, generator) for c in facts]

    effect = [statistics.mean(t["restored"][layer] - t["p_corrupt"] for t in traces) for layer in range(mue.n_layers)]
    print(f"{mue.name}: {len(traces)} facts "
          f"(P(true) clean median {statistics.median(t['p_clean'] for t in traces):.3f}, "
          f"corrupted {statistics.median(t['p_corrupt'] for t in traces):.3f}), window {args.window}, "
          f"{args.samples} noise samples, σ = {noise_scale:.4f}")
    print("layer  indirect effect of the MLP window")
    for layer, e in enumerate(effect):
        print(f"{layer:5d}  {e:+.4f}  {'#' * max(0, round(e / max(max(effect), 1e-9) * 40))}")
    lowest = 0 if args.keep_first_mlp else args.window // 2 + 1   # the first window without layer 0
    starts = range(lowest, mue.n_layers - args.width + 1)
    best = max(starts, key=lambda s: sum(effect[s : s + args.width]))
    print(f"best {args.width} consecutive layers by mean effect"
          f"{'' if args.keep_first_mlp else ' (windows without layer 0)'}: "
          f"{best}..{best + args.width - 1} "
          f"(mean {statistics.mean(effect[best : best + args.width]):+.4f}); "
          f"peak layer {max(range(len(effect)), key=effect.__getitem__)}")
    out = Path(args.out or f"bench/results/causal-trace-{mue.name}.json")
    out.write_text(json.dumps({"model": mue.name, "window": args.window, "samples": args.samples,
                               "noise_scale": noise_scale, "effect": effect, "best_start": best,
                               "width": args.width, "facts": traces}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
