"""What attending over shared key/value heads saves on a CPU (run on demand).

    python bench/shared_kv_heads.py [--model smollm2-135m] [--rounds 6] [--steps 4] [--out FILE]

SmolLM2's 9 query heads share 3 key/value heads. Under a padding mask transformers copies each
key/value head once per query head before torch's attention (repeat_kv); inside
`models.forward.grouped_query_attention` (which the v* search and the perplexity probe enter on
a CPU) torch's kernel attends over the shared heads instead. This bench times, in `--rounds`
rounds that alternate which goes first, a v* step of one HardCF case (a different one each round),
a step of the first four in one batch (as ROME searching ahead runs them) and the ME-PPL_50 probe
after an edit at ROME's layer, over copied heads and over shared ones, and checks that the numbers
are the same: δ after the steps and the perplexity, to the bit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case_timing import Tee, cpu_info  # noqa: E402

from editguard import get_editor, load_model, measure_baseline  # noqa: E402
from editguard.data import load_ppl_corpus  # noqa: E402
from editguard.editors.keys import context_templates  # noqa: E402
from editguard.editors.value import ValueObjective, _frozen  # noqa: E402
from editguard.metrics import perplexity as perplexity_module  # noqa: E402
from editguard.models.forward import grouped_query_attention  # noqa: E402
from editguard.suites import counterfact_hard  # noqa: E402


def attention(mue, shared: bool):
    return grouped_query_attention(mue) if shared else contextlib.nullcontext()


def v_steps(mue, hp, cases, templates, shared: bool, steps: int) -> tuple[float, torch.Tensor]:
    """Mean seconds of `steps` v* steps (after one untimed) and δ after them."""
    with _frozen(mue.model), attention(mue, shared):
        objective = ValueObjective(mue, hp, hp.layer, cases, templates)
        delta = torch.zeros(len(cases), mue.model.config.hidden_size, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp.v_lr)
        times = []
        for step in range(steps + 1):
            start = time.perf_counter()
            opt.zero_grad()
            loss, _ = objective(delta)
            loss.sum().backward()
            opt.step()
            if step:
                times.append(time.perf_counter() - start)
    return sum(times) / len(times), delta.detach().clone()


def probe(mue, baseline, layer: int, shared: bool) -> tuple[float, float]:
    """Seconds of the ME-PPL_50 probe as the guard runs it after an edit at `layer`, and its value."""
    real = perplexity_module.grouped_query_attention
    perplexity_module.grouped_query_attention = real if shared else (lambda _mue: contextlib.nullcontext())
    try:
        start = time.perf_counter()
        result = perplexity_module.perplexity(mue, baseline.sentences, bos=baseline.ppl_bos, unchanged_below=layer,
                                              layer_inputs=baseline.ppl_layer_inputs)
        return time.perf_counter() - start, result.ppl
    finally:
        perplexity_module.grouped_query_attention = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cpu = cpu_info()
    emit = Tee.for_cpu("shared_kv_heads", cpu, args.out)
    emit(f"# python bench/shared_kv_heads.py --model {args.model} --rounds {args.rounds} --steps {args.steps} "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    emit(f"cpu: {cpu['model']} ({cpu['family']}, {cpu['cpus']} logical CPUs); torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads; load before: {os.getloadavg()}")
    mue = load_model(args.model)
    config = mue.model.config
    emit(f"model {args.model}: {config.num_attention_heads} query heads, "
         f"{getattr(config, 'num_key_value_heads', config.num_attention_heads)} key/value heads")
    baseline = measure_baseline(mue, load_ppl_corpus("me-ppl-50", args.data), "me-ppl-50")
    hp = get_editor("rome", data_dir=args.data)._resolve(mue)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    cases = counterfact_hard(args.data, mue.tokenizer)
    probe(mue, baseline, hp.layer, True)   # fills the reused lower layers' output
    times: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    results: dict[bool, list] = {False: [], True: []}
    emit(f"{'round':<7}{'heads':<8}{'v* 1 case s/step':>18}{'v* 4 cases s/step':>19}{'ME-PPL_50 s':>13}")
    for rnd in range(args.rounds):
        for shared in ((False, True) if rnd % 2 == 0 else (True, False)):
            one, delta_one = v_steps(mue, hp, cases[rnd : rnd + 1], templates, shared, args.steps)
            four, delta_four = v_steps(mue, hp, cases[:4], templates, shared, args.steps)
            seconds, ppl = probe(mue, baseline, hp.layer, shared)
            times[shared].append((one, four, seconds))
            results[shared].append((delta_one, delta_four, ppl))
            emit(f"{rnd:<7}{'shared' if shared else 'copied':<8}{one:>18.3f}{four:>19.3f}{seconds:>13.3f}")
    same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
               for a, b in zip(results[False], results[True]))
    emit(f"numbers over shared heads equal those over copied heads (δ after {args.steps + 1} steps, ME-PPL_50, "
         f"bitwise): {'yes' if same else 'NO'}")
    for label, column in (("v* 1 case", 0), ("v* 4 cases", 1), ("ME-PPL_50 probe", 2)):
        copied = statistics.median(t[column] for t in times[False])
        shared = statistics.median(t[column] for t in times[True])
        ratios = [s[column] / c[column] for s, c in zip(times[True], times[False])]
        geometric = statistics.geometric_mean(ratios)
        emit(f"{label}: median {copied:.3f} s copied, {shared:.3f} s shared ({100 * (shared / copied - 1):+.1f} %); "
             f"shared/copied per round {', '.join(f'{r:.2f}' for r in ratios)} (geometric mean {geometric:.3f})")
    emit(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
