"""Time one guarded ROME edit on a randomly initialised model of Llama-2-7B's shape (run on demand).

    python bench/rome_big_shape.py --device cuda --dtype bfloat16            # the real shape (GPU)
    python bench/rome_big_shape.py --device cpu --layers 1 --steps 3         # a smoke run on a CPU

Only the timing and the memory are meaningful: the weights are random, so the edit's content is not.
The model is built directly on the device in the requested dtype (no float32 copy); the editor keeps
k̄/kᵘ, v* and ΔW in float32 as it does for every model. Writes bench/results/rome-big-shape-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def build(device: torch.device, dtype: torch.dtype, layers: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from editguard.models.loading import ModelUnderEdit
    from editguard.models.registry import family_for_model_type
    from editguard.models.tiny import byte_tokenizer

    config = LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": layers}, bos_token_id=256, eos_token_id=256,
                         pad_token_id=256)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    tok = byte_tokenizer()
    return ModelUnderEdit(name=f"random-llama2-7b-shape-{layers}L", model=model, tokenizer=tok,
                          family=family_for_model_type("llama"), edit_layer=min(5, layers - 1), device=device,
                          dtype=dtype, fingerprint=f"random-llama2-7b-shape-{layers}L-{dtype}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (Llama-2-7B: 32)")
    parser.add_argument("--steps", type=int, default=25, help="v* optimisation steps (papers: 25)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from editguard import EditCase, check, get_editor, measure_baseline
    from editguard.data import load_ppl_corpus
    from editguard.models.loading import resolve_device, resolve_dtype

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    t = time.perf_counter()
    mue = build(device, dtype, args.layers)
    seconds_build = time.perf_counter() - t
    n_params = sum(p.numel() for p in mue.model.parameters())
    sentences = load_ppl_corpus("me-ppl-50", os.environ.get("EDITGUARD_DATA"))
    baseline = measure_baseline(mue, sentences, "me-ppl-50")
    # Random weights put v* nowhere useful; stop on the step count, not on the loss.
    editor = get_editor("rome", {"v_num_grad_steps": args.steps, "early_stop_loss": 0.0})
    case = EditCase("bench", "{} is the capital of", "Paris", "Rome", "France")
    runs = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result = check(mue, editor, case, baseline)
        runs.append({"seconds": result.seconds, "peak_memory_mb": result.peak_memory_mb,
                     **{k: v for k, v in result.timings.items()}})
        print(f"edit + probes {result.seconds:.2f} s (keys {result.timings.get('seconds_keys', 0):.2f}, "
              f"v* {result.timings.get('seconds_v_star', 0):.2f}, ME-PPL_50 {result.timings['perplexity']:.2f}), "
              f"peak memory {result.peak_memory_mb:.0f} MiB")
    out = Path(args.out or f"bench/results/rome-big-shape-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"shape": {**LLAMA2_7B, "num_hidden_layers": args.layers}, "parameters": n_params, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dtype": args.dtype, "v_steps": args.steps, "seconds_build": seconds_build,
           "baseline_seconds_note": "first repeat includes context-template generation", "runs": runs,
           "torch": torch.__version__}
    out.write_text(json.dumps(doc, indent=1))
    print(f"{n_params / 1e9:.2f}B parameters on {doc['device_name']} ({args.dtype}); wrote {out}")


if __name__ == "__main__":
    main()
