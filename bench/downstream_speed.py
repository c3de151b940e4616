"""How long the downstream probes take: 200 items of each multiple-choice task (PIQA, HellaSwag,
MMLU 0-shot) and of LAMBADA on the embedded SmolLM2-135M, scored as `--downstream` scores them.

    python bench/downstream_speed.py [--n 200] [--threads 2] [--tasks piqa,hellaswag,mmlu,lambada]
                                     [--precision auto|float32|bfloat16] [--tokens-per-batch 1024]

Prints wall seconds per task, the multiple-choice total (goal: ≤ 60 s on 2 CPU cores), the CPU
seconds the process used (on a machine shared with other jobs, wall time overstates the cost;
CPU seconds / threads is what an idle machine would take, roughly) and the load average.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tasks", default="piqa,hellaswag,mmlu,lambada")
    parser.add_argument("--precision", default="auto", help="auto, float32 or bfloat16 (see resolve_precision)")
    parser.add_argument("--tokens-per-batch", type=int, default=1024)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    args = parser.parse_args()

    import torch

    from editguard.metrics.downstream import evaluate, subset
    from editguard.models import load_model
    from editguard.models.precision import resolve_precision
    from editguard.tasks import MULTIPLE_CHOICE, get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    mue = load_model(args.model, "cpu")
    load_before = os.getloadavg()[0]
    print(f"{args.model} on {torch.get_num_threads()} CPU thread(s) of {os.cpu_count()} cores, n={args.n} "
          f"(seed {args.seed}), precision {resolve_precision(mue, args.precision)}, "
          f"{args.tokens_per_batch} tokens per batch; load average at start {load_before:.2f}")
    mc_total = total = mc_cpu = 0.0
    for name in args.tasks.split(","):
        task = get_task(name)
        everything = task.load(args.data)
        items = [everything[i] for i in subset(everything, args.n, args.seed, name)]
        start, cpu_start = time.perf_counter(), time.process_time()
        score = evaluate(mue, task, items, precision=args.precision, tokens_per_batch=args.tokens_per_batch)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        total += seconds
        if task.kind == MULTIPLE_CHOICE:
            mc_total, mc_cpu = mc_total + seconds, mc_cpu + cpu
        print(f"  {name:10s} {len(items):4d} items  {seconds:6.1f} s wall  {cpu:6.1f} s CPU  "
              f"{task.metric} {score.accuracy:.3f}")
    print(f"multiple-choice tasks: {mc_total:.1f} s wall, {mc_cpu:.1f} s CPU over {torch.get_num_threads()} thread(s) "
          f"(goal ≤ 60 s on 2 cores); all tasks: {total:.1f} s wall; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
