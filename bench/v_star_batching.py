"""What a v* step costs per case when several cases' searches share one batch (run on demand).

    python bench/v_star_batching.py [--model smollm2-135m] [--cases 4] [--rounds 6] [--steps 3] [--out FILE]

A v* step of one case runs ~22 short sequences (the context templates and the KL prompt) through
the layers above the edited one: products of 132 rows, which a 2-core CPU runs below its peak.
`value.optimize_values` searches `value.CASES_PER_SEARCH` cases in one batch (MEMIT and AlphaEdit
do, for the cases of one edit). This measures, interleaved over `--rounds` rounds so that the
machine's drift reaches every variant alike (medians reported):
- the first HardCF case's search replicated k = 1, 2, 4, 8 times in one batch: the cost of a step
  per case as the batch grows, and one case on 1 thread;
- the first `--cases` HardCF cases in one batch against each alone (the sum of their steps): what
  the batching saves on real cases of different lengths;
- then those cases' whole searches, in one batch and each alone: steps, final loss and v* compared.
Output also goes to bench/results/v_star_batching-<cpu>.txt.
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
from editguard.editors.value import ValueObjective, _frozen, optimize_value, optimize_values  # noqa: E402
from editguard.suites import counterfact_hard  # noqa: E402

REPLICAS = (1, 2, 4, 8)


class Search:
    """One Adam step at a time on a ValueObjective over `cases`."""

    def __init__(self, mue, hp, templates, cases):
        self.objective = ValueObjective(mue, hp, hp.layer, cases, templates)
        self.delta = torch.zeros(len(cases), mue.model.config.hidden_size, requires_grad=True)
        self.opt = torch.optim.Adam([self.delta], lr=hp.v_lr)
        self.step()   # warm-up: kl_init, first-call costs

    def step(self) -> None:
        self.opt.zero_grad()
        loss, _ = self.objective(self.delta)
        loss.sum().backward()
        self.opt.step()

    @property
    def rows(self) -> str:
        return " x ".join(map(str, self.objective.batch.suffix_ids.shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="steps timed per variant and round")
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cpu = cpu_info()
    emit = Tee.for_cpu("v_star_batching", cpu, args.out)
    emit(f"# python bench/v_star_batching.py --model {args.model} --cases {args.cases} --rounds {args.rounds} "
         f"--steps {args.steps} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    emit(f"cpu: {cpu['model']} ({cpu['family']}, {cpu['cpus']} logical CPUs); torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads; float32; load {os.getloadavg()}")

    mue = load_model(args.model)
    hp = get_editor("rome", data_dir=args.data)._resolve(mue)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    cases = counterfact_hard(args.data, mue.tokenizer)[: args.cases]
    threads = torch.get_num_threads()
    emit(f"model {args.model}; layer {hp.layer}; {len(templates)} templates; cases "
         + ", ".join(f"{c.case_id} {c.subject!r}" for c in cases))

    with _frozen(mue.model):
        # (label, searches timed one after the other, threads, cases they stand for)
        variants = [(f"case {cases[0].case_id} x{k} in one batch, {threads} threads",
                     [Search(mue, hp, templates, [cases[0]] * k)], threads, k) for k in REPLICAS]
        variants.append((f"case {cases[0].case_id} alone, 1 thread", [Search(mue, hp, templates, [cases[0]])], 1, 1))
        variants.append((f"{len(cases)} cases, each alone, {threads} threads",
                         [Search(mue, hp, templates, [case]) for case in cases], threads, len(cases)))
        variants.append((f"{len(cases)} cases in one batch, {threads} threads",
                         [Search(mue, hp, templates, cases)], threads, len(cases)))
        seconds: dict[str, list[float]] = {label: [] for label, *_ in variants}
        for _ in range(args.rounds):
            for label, searches, n_threads, _n in variants:
                torch.set_num_threads(n_threads)
                start = time.perf_counter()
                for _ in range(args.steps):
                    for search in searches:
                        search.step()
                seconds[label].append((time.perf_counter() - start) / args.steps)
        torch.set_num_threads(threads)

    emit(f"{'variant':<44}{'rows x width':>16}{'s/step':>9}{'s/step per case':>17}   all rounds (s/step)")
    for label, searches, _threads, n in variants:
        median = statistics.median(seconds[label])
        rows = " + ".join(s.rows for s in searches) if len(searches) < 3 else f"{len(searches)} batches"
        emit(f"{label:<44}{rows:>16}{median:>9.3f}{median / n:>17.3f}   "
             + ", ".join(f"{s:.3f}" for s in seconds[label]))

    start = time.perf_counter()
    together = optimize_values(mue, hp, hp.layer, cases, templates, cases_per_search=len(cases))
    seconds_together, start = time.perf_counter() - start, time.perf_counter()
    alone = [optimize_value(mue, hp, hp.layer, case, templates) for case in cases]
    seconds_alone = time.perf_counter() - start
    emit(f"\nwhole searches: {len(cases)} cases in one batch {seconds_together:.1f}s, each alone {seconds_alone:.1f}s")
    emit(f"{'case':<28}{'steps':>7}{'loss together':>15}{'loss alone':>12}{'v* rel diff':>13}")
    for case, batched, one in zip(cases, together, alone):
        diff = float((batched.v_star - one.v_star).norm() / one.v_star.norm())
        emit(f"{(case.case_id + ' ' + case.subject)[:27]:<28}{f'{batched.steps}/{one.steps}':>7}"
             f"{batched.loss:>15.5f}{one.loss:>12.5f}{diff:>13.2e}")


if __name__ == "__main__":
    main()
