"""Where one guarded ROME case spends its time on this CPU (run on demand).

    python bench/case_profile.py [--model smollm2-135m] [--case 0] [--steps 5] [--reference] [--out FILE]

Profiles, with torch.profiler (shapes and FLOPs recorded), `--steps` v* steps of the first
HardCF case (`value.ValueObjective` + backward, as `descend` runs them) and one ME-PPL_50
probe as the guard runs it after an edit (starting at the edited layer, the unedited lower
layers' output reused). Prints per phase: wall seconds, the matrix products (aten::mm, addmm,
bmm, linear's products, SDPA) grouped by shape with their achieved GFLOP/s, their share of the
phase, the rest by operator, the thread settings, and a float32 GEMM peak measured on the
largest product shape (best of 20) for comparison with the CPU's nominal peak. With `--reference`,
the same steps and the ME-PPL_50 probe on case_timing's reference path are profiled too: the
FLOPs each path does, and the rate each runs them at on this CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case_timing import Tee, cpu_info, reference_perplexity, reference_v_star  # noqa: E402

from editguard import get_editor, load_model, measure_baseline  # noqa: E402
from editguard.data import load_ppl_corpus  # noqa: E402
from editguard.editors.keys import context_templates  # noqa: E402
from editguard.editors.value import ValueObjective, _frozen  # noqa: E402
from editguard.metrics.perplexity import perplexity  # noqa: E402
from editguard.models.precision import cpu_multiplies_bfloat16_natively  # noqa: E402
from editguard.suites import counterfact_hard  # noqa: E402

PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def summarise(emit, prof, wall: float, label: str) -> None:
    events = prof.key_averages(group_by_input_shape=True)
    total_self = sum(e.self_cpu_time_total for e in events) / 1e6
    emit(f"\n== {label}: wall {wall:.3f}s, profiled self CPU time {total_self:.3f}s "
         f"(summed over threads: up to 2× the wall time on 2 threads)")
    gemm = [e for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
    gemm_s = sum(e.self_cpu_time_total for e in gemm) / 1e6
    gemm_flops = sum(e.flops for e in gemm)
    emit(f"matrix products (mm/addmm/bmm): {gemm_s:.3f}s self, {gemm_flops / 1e9:.2f} GFLOP, "
         f"{gemm_flops / 1e9 / max(gemm_s, 1e-9):.1f} GFLOP/s; {100 * gemm_s / max(wall, 1e-9):.0f}% of the wall time; "
         f"over the wall time {gemm_flops / 1e9 / max(wall, 1e-9):.1f} GFLOP/s")
    emit(f"{'op':<34}{'shapes':<62}{'calls':>7}{'self s':>9}{'GFLOP':>9}{'GFLOP/s':>9}")
    for e in sorted(gemm, key=lambda e: -e.self_cpu_time_total)[:14]:
        s = e.self_cpu_time_total / 1e6
        emit(f"{e.key:<34}{str(e.input_shapes)[:61]:<62}{e.count:>7}{s:>9.3f}{e.flops / 1e9:>9.2f}"
             f"{e.flops / 1e9 / max(s, 1e-9):>9.1f}")
    by_op = defaultdict(lambda: [0.0, 0])
    for e in events:
        by_op[e.key][0] += e.self_cpu_time_total / 1e6
        by_op[e.key][1] += e.count
    emit(f"{'op (all shapes)':<60}{'calls':>8}{'self s':>9}{'share':>8}")
    for key, (s, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:22]:
        emit(f"{key[:59]:<60}{n:>8}{s:>9.3f}{100 * s / max(total_self, 1e-9):>7.1f}%")


def gemm_peak(m: int, k: int, n: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = float("inf")
    for _ in range(21):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--case", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--reference", action="store_true",
                        help="also profile the same v* steps and ME-PPL_50 on case_timing's reference path")
    args = parser.parse_args()
    cpu = cpu_info()
    emit = Tee.for_cpu("case_profile", cpu, args.out)
    emit(f"# python bench/case_profile.py --model {args.model} --case {args.case} --steps {args.steps}"
         f"{' --reference' if args.reference else ''} "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    emit(f"cpu: {cpu['model']} ({cpu['family']}, {cpu['cpus']} logical CPUs); bfloat16 native: "
         f"{'yes' if cpu_multiplies_bfloat16_natively() else 'no'} (flags: {cpu['bf16_flags']})")
    emit(f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, {torch.get_num_interop_threads()} "
         f"inter-op; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
         f"mkldnn {torch.backends.mkldnn.is_available()}")
    emit(f"load: {os.getloadavg()}")

    mue = load_model(args.model)
    sentences = load_ppl_corpus("me-ppl-50", args.data)
    baseline = measure_baseline(mue, sentences, "me-ppl-50")
    editor = get_editor("rome", data_dir=args.data)
    hp = editor._resolve(mue)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    case = counterfact_hard(args.data, mue.tokenizer)[args.case]
    emit(f"model {args.model}; case {case.case_id} {case.subject!r}; layer {hp.layer}; {len(templates)} templates")

    with _frozen(mue.model):
        objective = ValueObjective(mue, hp, hp.layer, [case], templates)
        b = objective.batch
        emit(f"v* batch: {b.suffix_ids.shape[0]} sequences, suffix width {b.suffix_ids.shape[1]}, "
             f"cached prefix width {b.mask.shape[1] - b.suffix_ids.shape[1]}; starts above layer: "
             f"{objective.starts_above_layer}; head rows {len(objective.rows)} + "
             f"{len(objective.kl_rows)}")
        delta = torch.zeros(1, mue.model.config.hidden_size, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp.v_lr)

        def step():
            opt.zero_grad()
            with record_function("v* forward"):
                loss, _ = objective(delta)
            with record_function("v* backward"):
                loss.sum().backward()
            opt.step()

        step()   # warm-up (kl_init, oneDNN/MKL first-call costs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            wall = time.perf_counter() - t
        summarise(emit, prof, wall, f"v*: {args.steps} steps ({wall / args.steps:.3f}s per step)")
        phases = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("v* ")}
        emit("per step: " + ", ".join(f"{k} {v / args.steps:.3f}s" for k, v in phases.items()))

    layer = hp.layer
    perplexity(mue, baseline.sentences, bos=baseline.ppl_bos, unchanged_below=layer,
               layer_inputs=baseline.ppl_layer_inputs)   # fills the reused lower layers' output
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        t = time.perf_counter()
        perplexity(mue, baseline.sentences, bos=baseline.ppl_bos, unchanged_below=layer,
                   layer_inputs=baseline.ppl_layer_inputs)
        wall = time.perf_counter() - t
    summarise(emit, prof, wall, f"ME-PPL_50 probe (layers {layer}.. of {mue.n_layers})")

    if args.reference:
        # The same work on the bench's reference path (case_timing --reference): how many FLOPs it
        # does, and at what rate, beside editguard's.
        hparams = {**editor.hparams(mue), "v_num_grad_steps": args.steps + 1}  # + 1: its last pass has no backward
        reference_v_star(mue, {**hparams, "v_num_grad_steps": 2}, layer, case, templates)   # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
            t = time.perf_counter()
            reference_v_star(mue, hparams, layer, case, templates)
            wall = time.perf_counter() - t
        summarise(emit, prof, wall, f"reference v*: {args.steps} steps and one more forward pass "
                                    f"({wall / args.steps:.3f}s per step)")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
            t = time.perf_counter()
            reference_perplexity(mue, sentences)
            wall = time.perf_counter() - t
        summarise(emit, prof, wall, "reference ME-PPL_50 (ppl.py: all 50 padded together, every layer)")

    shapes = ((132, 576, 1536), (132, 1536, 576), (132, 576, 576), (400, 576, 1536), (400, 576, 49152),
              (2048, 2048, 2048))
    for threads in (torch.get_num_threads(), 1):
        torch.set_num_threads(threads)
        emit(f"\nfloat32 product rate on {threads} thread(s), best of 20 (GFLOP/s): "
             + ", ".join(f"{m}x{k}@{k}x{n} {gemm_peak(m, k, n):.0f}" for m, k, n in shapes))


if __name__ == "__main__":
    main()
