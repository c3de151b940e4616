"""How fast a v* step runs when two processes share the CPU, as `pytest -n 2` runs a suite (on demand).

    python bench/side_by_side.py [--model smollm2-135m] [--steps 12] [--out FILE]

Times `--steps` v* steps (`value.ValueObjective` + backward + Adam, as ROME's search runs them)
of HardCF cases 0 and 1 in four set-ups: each process alone on torch's threads; two processes side
by side on torch's threads each (what `pytest -n 2` did before each worker took its share of the
CPUs); two processes side by side on one thread each (the share on 2 CPUs); each alone on one
thread. Side-by-side copies start their timed steps at the same wall-clock second. Prints s/step
per process and the steps per second of the machine in each set-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case_timing import Tee, cpu_info, load  # noqa: E402

from editguard.run.config import available_cpus  # noqa: E402


def steps_per_second(args, case: int, threads: int, start_at: float) -> None:
    """One copy: load, warm up one step, wait for `start_at`, time the steps; prints s/step."""
    import torch

    torch.set_num_threads(threads)
    from editguard import get_editor, load_model
    from editguard.editors.keys import context_templates
    from editguard.editors.value import ValueObjective, _frozen
    from editguard.suites import counterfact_hard

    mue = load_model(args.model)
    editor = get_editor("rome", data_dir=args.data)
    hp = editor._resolve(mue)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    hard = counterfact_hard(args.data, mue.tokenizer)[case]
    with _frozen(mue.model):
        objective = ValueObjective(mue, hp, hp.layer, [hard], templates)
        delta = torch.zeros(1, mue.model.config.hidden_size, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp.v_lr)

        def step():
            opt.zero_grad()
            loss, _ = objective(delta)
            loss.sum().backward()
            opt.step()

        step()
        while time.time() < start_at:
            time.sleep(0.01)
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        print(f"{(time.perf_counter() - t) / args.steps:.4f}", flush=True)


def run(args, cases: list[int], threads: int) -> list[float]:
    """Copies for `cases`, started together; each one's s/step."""
    start_at = time.time() + 45   # after every copy has loaded the model and warmed up
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--model", args.model, "--steps",
                               str(args.steps), "--data", args.data, "--copy", f"{case},{threads},{start_at}"],
                              stdout=subprocess.PIPE, text=True) for case in cases]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--out", default=None, help="default bench/results/side_by_side-<cpu>.txt; '-' for none")
    parser.add_argument("--copy", default=None, help=argparse.SUPPRESS)   # CASE,THREADS,START: one timed copy
    args = parser.parse_args()
    if args.copy:
        case, threads, start_at = args.copy.split(",")
        return steps_per_second(args, int(case), int(threads), float(start_at))
    cpu = cpu_info()
    emit = Tee.for_cpu("side_by_side", cpu, args.out)
    cpus = available_cpus()
    emit(f"# python bench/side_by_side.py --model {args.model} --steps {args.steps} "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    emit(f"cpu: {cpu['model']} ({cpu['family']}, {cpus} CPUs); load before: {load()}")
    emit(f"{'set-up':<48}{'case 0 s/step':>15}{'case 1 s/step':>15}{'steps/s, machine':>18}")
    for label, cases, threads in (
            (f"each alone, {cpus} threads", [[0], [1]], cpus),
            (f"side by side, {cpus} threads each", [[0, 1]], cpus),
            ("side by side, 1 thread each", [[0, 1]], 1),
            ("each alone, 1 thread", [[0], [1]], 1)):
        times = [t for group in cases for t in run(args, group, threads)]
        # Alone: one step at a time on the machine; side by side: both copies' steps at once.
        rate = sum(1 / t for t in times) if len(cases) == 1 else 2 / sum(times)
        emit(f"{label:<48}{times[0]:>15.3f}{times[1]:>15.3f}{rate:>18.2f}")
    emit(f"load after: {load()}")


if __name__ == "__main__":
    main()
