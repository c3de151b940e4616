"""Would batching v* searches, or other thread counts, make a case's v* step cheaper? (run on demand)

    python bench/v_star_batching.py [--model smollm2-135m] [--case 0] [--rounds 3] [--steps 3] [--out FILE]

A v* step of one case runs ~22 short sequences (the context templates and the KL prompt) through
the layers above the edited one: products of 132 rows, which a 2-core CPU runs below its peak.
Cases of a single-edit suite all start from the same restored model, so their searches could run
as one batch. This measures what such a batch would cost per case: the search's batch is replicated
`k` times (the templates repeated: the shapes of k cases whose prompts are as long as this one's)
and a step's time is divided by k. It also times one step with 1 and with 2 threads. The variants
run interleaved, `--rounds` times each, so that the machine's drift reaches them all alike; the
median per variant is reported. Output also goes to bench/results/v_star_batching-<cpu>.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case_timing import Tee, cpu_info  # noqa: E402

from editguard import get_editor, load_model  # noqa: E402
from editguard.editors.keys import context_templates  # noqa: E402
from editguard.editors.rome import ValueObjective, _frozen  # noqa: E402
from editguard.suites import counterfact_hard  # noqa: E402

BATCHES = (1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--case", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps timed per variant and round")
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cpu = cpu_info()
    emit = Tee.for_cpu("v_star_batching", cpu, args.out)
    emit(f"# python bench/v_star_batching.py --model {args.model} --case {args.case} --rounds {args.rounds} "
         f"--steps {args.steps} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    emit(f"cpu: {cpu['model']} ({cpu['family']}, {cpu['cpus']} logical CPUs); torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads; float32; load {os.getloadavg()}")

    mue = load_model(args.model)
    hp = get_editor("rome", data_dir=args.data)._resolve(mue)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    case = counterfact_hard(args.data, mue.tokenizer)[args.case]
    threads = torch.get_num_threads()
    emit(f"model {args.model}; case {case.case_id} {case.subject!r}; layer {hp.layer}; {len(templates)} templates")

    with _frozen(mue.model):
        searches = {}
        for k in BATCHES:
            objective = ValueObjective(mue, hp, hp.layer, case, templates * k)
            delta = torch.zeros(mue.model.config.hidden_size, requires_grad=True)
            searches[k] = (objective, delta, torch.optim.Adam([delta], lr=hp.v_lr))

        def step(k: int) -> None:
            objective, delta, opt = searches[k]
            opt.zero_grad()
            loss, _ = objective(delta)
            loss.backward()
            opt.step()

        for k in BATCHES:
            step(k)   # warm-up: kl_init, first-call costs
        variants = [(k, threads) for k in BATCHES] + [(1, 1)]
        seconds: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for k, n_threads in variants:
                torch.set_num_threads(n_threads)
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(k)
                seconds[(k, n_threads)].append((time.perf_counter() - start) / args.steps)
        torch.set_num_threads(threads)

    emit(f"{'variant':<34}{'rows x width':>14}{'s/step':>9}{'s/step per case':>17}   all rounds (s/step)")
    for k, n_threads in variants:
        shape = tuple(searches[k][0].batch.suffix_ids.shape)
        median = statistics.median(seconds[(k, n_threads)])
        label = f"{k} case{'s' * (k > 1)} in one batch, {n_threads} thread{'s' * (n_threads > 1)}"
        emit(f"{label:<34}{f'{shape[0]} x {shape[1]}':>14}{median:>9.3f}{median / k:>17.3f}"
             f"   {', '.join(f'{s:.3f}' for s in seconds[(k, n_threads)])}")


if __name__ == "__main__":
    main()
