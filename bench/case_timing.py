"""Per-case time breakdown of a guarded ROME edit on the embedded model (run on demand).

    python bench/case_timing.py [--editor rome] [--cases 4] [--first K] [--threads N] [--reference] [--alone]
                                [--workers N]

Prints keys, v*, update, perplexity, efficacy/anatomy and restore seconds per case, and the mean.

With `--reference`, the same cases also run through the reference path in the same process: the
papers' algorithm as their EasyEdit-based code runs it, written here from their description and
code (none of editguard's optimised functions): keys from a full forward pass, every v* step a
full forward and backward pass over all positions with the LM head at every position, float32,
their early stop (loss < 5e-2) and norm clamp; ME-PPL as their ppl.py batches it (all 50
sentences padded together, logits at every position). Both paths' ΔW and edited perplexity are
compared, and the last line reads `editguard X s/case; reference path Y s/case; speedup Z×` (with the
range of the per-case ratios). The two paths run interleaved, case by case, alternating which goes
first: on a shared machine whose speed drifts by ±20 % over minutes, running one path's cases after
the other's measured the drift as much as the paths (2.61× to 3.24× for the same code).
The reference supports ROME (unprefixed key in the update, EasyEdit's default mom2 setting: off).

Each guarded edit is told the next cases, as a suite run tells it (guard.check's `upcoming`): ROME
then searches four cases' v* in one batch during the first of them and the next three use theirs,
so the per-case column is uneven and the mean is what compares. `--alone`: each v* searched alone.

`--workers N` runs N copies of the bench side by side, as `pytest -n N` runs a suite: each its own
`--cases` cases (copy i from case `--first` + i × cases), each on its share of the CPUs
(`--threads`, default the CPUs divided by N, as the plugin gives an xdist worker), both paths
interleaved in each; it prints every copy's table and one line over all their cases.

The header names the CPU (/proc/cpuinfo's model name, family/model, cores) and whether it
multiplies bfloat16 natively (AVX-512 BF16 or AMX flags, as `precision: auto` decides); the
output is also written to bench/results/case_timing-<cpu>.txt (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from editguard import check, get_editor, load_model, measure_baseline
from editguard.data import load_ppl_corpus
from editguard.editors.keys import context_templates
from editguard.editors.value import _frozen
from editguard.models.precision import cpu_multiplies_bfloat16_natively
from editguard.run.config import available_cpus, threads_per_worker
from editguard.suites import counterfact_hard

COLUMNS = ["seconds_keys", "seconds_v_star", "seconds_update", "perplexity", "efficacy", "anatomy", "restore"]
REFERENCE_COLUMNS = ["keys", "v_star", "update", "perplexity", "restore"]


class RecordingEditor:
    """The editor, keeping the last EditReport (its ΔW) for the comparison with the reference."""

    def __init__(self, editor):
        self.editor, self.last_report = editor, None

    def __getattr__(self, name):
        return getattr(self.editor, name)

    def apply(self, mue, cases):
        self.last_report = self.editor.apply(mue, cases)
        return self.last_report


# --- the reference path ----------------------------------------------------------------------

def lookup_index(tok, template: str, subject: str) -> int:
    """The subject's last token in template.format(subject), counted as ROME's repr_tools does."""
    return len(tok(template[: template.index("{}")] + subject)["input_ids"]) - 1


def fill(template: str, text: str) -> str:
    return template.replace("{}", text, 1)


def padded(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    ids = [tok(t)["input_ids"] for t in texts]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
    return {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def reference_key_value(mue, layer: int, templates: list[str], subject: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean input and output of the rewrite projection at the subject's last token (full forward)."""
    module = mue.module(mue.family.rewrite.format(layer))
    seen = {}
    handle = module.register_forward_hook(lambda _m, args, out: seen.update(k=args[0], v=out))
    try:
        mue.model(**padded(mue.tokenizer, [fill(t, subject) for t in templates]))
    finally:
        handle.remove()
    rows = torch.arange(len(templates))
    idx = torch.tensor([lookup_index(mue.tokenizer, t, subject) for t in templates])
    return seen["k"][rows, idx].mean(0), seen["v"][rows, idx].mean(0)


def reference_v_star(mue, hp: dict, layer: int, case, templates: list[str]) -> tuple[torch.Tensor, int]:
    """compute_v as in the papers' code: all prompts padded together, δ added to the MLP output at
    each prompt's subject token, full logits, NLL over the target tokens, KL at "{} is a"."""
    tok = mue.tokenizer
    target = tok(" " + case.target_new, add_special_tokens=False)["input_ids"]
    rewriting = [fill(t, case.prompt) + tok.decode(target[:-1]) for t in templates]
    prompts = rewriting + ["{} is a"]
    inputs = padded(tok, [fill(p, case.subject) for p in prompts])
    targets = torch.full((len(rewriting), inputs["input_ids"].shape[1]), -100, dtype=torch.long)
    for i in range(len(rewriting)):
        length = int(inputs["attention_mask"][i].sum())
        targets[i, length - len(target) : length] = torch.tensor(target)
    lookups = [lookup_index(tok, p, case.subject) for p in prompts]
    delta = torch.zeros(mue.model.config.hidden_size, requires_grad=True)
    target_init, kl_init = None, None

    def edit_output(_module, _args, out):
        nonlocal target_init
        if target_init is None:
            target_init = out[0, lookups[0]].detach().clone()
        out = out.clone()
        for i, idx in enumerate(lookups):
            out[i, idx, :] += delta
        return out

    opt = torch.optim.Adam([delta], lr=hp["v_lr"])
    # Frozen as their code freezes it; _frozen puts the flags back, so that the guarded path, which
    # runs interleaved with this one, finds the model as it was.
    handle = mue.module(mue.family.mlp.format(layer)).register_forward_hook(edit_output)
    try:
        with _frozen(mue.model):
            for it in range(hp["v_num_grad_steps"]):
                opt.zero_grad()
                logits = mue.model(**inputs).logits
                kl_log_probs = torch.log_softmax(logits[len(rewriting):, lookups[-1]], dim=-1)
                if kl_init is None:
                    kl_init = kl_log_probs.detach().clone()
                log_probs = torch.log_softmax(logits[: len(rewriting)], dim=2)
                labels = torch.where(targets != -100, targets, 0)[:, :, None]
                token_lp = torch.gather(log_probs, 2, labels)[:, :, 0]
                mask = (targets != -100).float()
                nll = (-(token_lp * mask).sum(1) / len(target)).mean()
                kl = hp["kl_factor"] * torch.nn.functional.kl_div(kl_init, kl_log_probs, log_target=True,
                                                                  reduction="batchmean")
                decay = hp["v_weight_decay"] * (torch.norm(delta) / torch.norm(target_init) ** 2)
                loss = nll + kl + decay
                if loss < 5e-2 or it == hp["v_num_grad_steps"] - 1:
                    break
                loss.backward()
                opt.step()
                max_norm = hp["clamp_norm_factor"] * target_init.norm()
                if delta.norm() > max_norm:
                    with torch.no_grad():
                        delta[...] = delta * max_norm / delta.norm()
    finally:
        handle.remove()
    return target_init + delta.detach(), it + 1


@torch.no_grad()
def reference_perplexity(mue, sentences: list[str]) -> float:
    """ppl.py: every sentence without special tokens, all padded together, one forward pass,
    the mean of per-sentence exp(mean NLL of tokens 2..n)."""
    tok = mue.tokenizer
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in sentences]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
    logits = mue.model(input_ids=input_ids, attention_mask=mask).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
    shift_mask = mask[:, 1:].float()
    per_sentence = torch.exp((nll * shift_mask).sum(1) / shift_mask.sum(1))
    return float(per_sentence.mean())


def reference_case(mue, hp: dict, layer: int, case, templates: list[str], sentences: list[str]):
    """ROME's edit and ME-PPL on the reference path; the weight is restored after."""
    timings = {}
    t = time.perf_counter()
    k_bar, _ = reference_key_value(mue, layer, [fill(tpl, case.prompt) for tpl in templates], case.subject)
    k_plain, v_plain = reference_key_value(mue, layer, [case.prompt], case.subject)
    timings["keys"], t = time.perf_counter() - t, time.perf_counter()
    v_star, steps = reference_v_star(mue, hp, layer, case, templates)
    timings["v_star"], t = time.perf_counter() - t, time.perf_counter()
    delta_w = torch.outer(v_star - v_plain, k_bar) / torch.dot(k_bar, k_plain)
    weight = mue.rewrite_matrix(layer)
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(delta_w)
    timings["update"], t = time.perf_counter() - t, time.perf_counter()
    try:
        ppl = reference_perplexity(mue, sentences)
        timings["perplexity"], t = time.perf_counter() - t, time.perf_counter()
    finally:
        with torch.no_grad():
            weight.copy_(original)
    timings["restore"] = time.perf_counter() - t
    return delta_w, ppl, steps, timings


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_info() -> dict[str, str]:
    """The CPU's model name, family/model, logical CPUs and bfloat16 flags, from /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break   # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name", "unknown CPU"),
        "family": f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}",
        "cpus": str(os.cpu_count()),
        "bf16_flags": ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none",
    }


def cpu_slug(model: str) -> str:
    """'AMD EPYC 7B13 64-Core Processor' -> 'amd-epyc-7b13-64-core-processor'."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)", "", model.lower())).strip("-") or "cpu"


class Tee:
    """print() to stdout and to the results file."""

    def __init__(self, path: str | None):
        self.file = open(path, "w") if path else None

    @classmethod
    def for_cpu(cls, bench: str, cpu: dict[str, str], out: str | None) -> "Tee":
        """Output to `out` ('-': stdout only), by default bench/results/<bench>-<cpu>.txt."""
        out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                  f"{bench}-{cpu_slug(cpu['model'])}.txt")
        return cls(None if out == "-" else out)

    def __call__(self, *parts) -> None:
        print(*parts, flush=True)
        if self.file:
            print(*parts, file=self.file, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default="rome")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--first", type=int, default=0, help="skip the first K HardCF cases")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1,
                        help="run N copies side by side, each on its own cases and its share of the CPUs")
    parser.add_argument("--summary", default=None, help=argparse.SUPPRESS)   # a copy's per-case seconds, as JSON
    parser.add_argument("--data", default=os.environ.get("EDITGUARD_DATA"))
    parser.add_argument("--reference", action="store_true",
                        help="also run the papers' path on the same cases and compare (ROME only)")
    parser.add_argument("--alone", action="store_true",
                        help="do not tell the editor the next cases (each ROME v* searched alone)")
    parser.add_argument("--out", default=None,
                        help="results file (default bench/results/case_timing-<cpu>.txt; '-' for none)")
    args = parser.parse_args()
    if args.reference and args.editor != "rome":
        parser.error(f"--reference runs the papers' ROME; --editor {args.editor} has no reference path here")
    cpu = cpu_info()
    emit = Tee.for_cpu("case_timing", cpu, args.out)   # every line goes to stdout and the results file
    if args.workers > 1:
        return run_workers(args, emit)
    if args.threads:
        torch.set_num_threads(args.threads)

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    emit(f"# python bench/case_timing.py --editor {args.editor} --model {args.model} --cases {args.cases}"
          f"{f' --first {args.first}' if args.first else ''}{f' --threads {args.threads}' if args.threads else ''}"
          f"{' --reference' if args.reference else ''}{' --alone' if args.alone else ''}   (commit {commit or '?'}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    emit(f"cpu: {cpu['model']} ({cpu['family']}, {cpu['cpus']} logical CPUs); bfloat16 native: "
          f"{'yes' if cpu_multiplies_bfloat16_natively() else 'no'} (flags: {cpu['bf16_flags']}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.get_num_interop_threads()} interop")
    emit(f"load before: {load()}")
    t = time.perf_counter()
    mue = load_model(args.model)
    emit(f"load {args.model}: {time.perf_counter() - t:.1f}s; torch threads {torch.get_num_threads()}")
    t = time.perf_counter()
    sentences = load_ppl_corpus("me-ppl-50", args.data)
    baseline = measure_baseline(mue, sentences, "me-ppl-50")
    emit(f"baseline ME-PPL_50 {baseline.ppl.ppl:.2f}: {time.perf_counter() - t:.1f}s")
    editor = RecordingEditor(get_editor(args.editor, data_dir=args.data))
    cases = counterfact_hard(args.data, mue.tokenizer)[args.first : args.first + args.cases]
    # The first edit also generates and caches the context templates: time it apart.
    check(mue, editor, cases[0], baseline)

    if args.reference:
        hp = editor.hparams(mue)
        templates = context_templates(mue, tuple(tuple(p) for p in hp["context_template_length_params"]),
                                      hp["template_seed"])
        emit("editguard and the reference path run interleaved, case by case, alternating which goes first "
             "(every second case: the reference), so that both see the same machine")
    results, reference_runs = [], []
    for i, case in enumerate(cases):
        paths = ["editguard", "reference"][: 1 + args.reference]
        for path in (paths if i % 2 == 0 else paths[::-1]):
            if path == "editguard":
                result = check(mue, editor, case, baseline, upcoming=() if args.alone else cases[i + 1 :])
                results.append((result, editor.last_report.vectors["delta_w"].detach().clone()))
            else:
                start = time.perf_counter()
                ref = reference_case(mue, hp, hp["layer"], case, templates, sentences)
                reference_runs.append((*ref, time.perf_counter() - start))
        print(f"case {i + 1}/{len(cases)} done", flush=True)

    emit(f"{'case':<32}" + "".join(f"{c.replace('seconds_', ''):>11}" for c in COLUMNS) + f"{'total':>11}"
         + f"{'v steps':>9}  v* search")
    for case, (result, _) in zip(cases, results):
        row = [result.timings.get(c, 0.0) for c in COLUMNS]
        emit(f"{(case.case_id + ' ' + case.subject)[:31]:<32}" + "".join(f"{v:>11.2f}" for v in row)
             + f"{result.seconds:>11.2f}{result.diagnostics['v_steps']:>9}"
             + f"  {result.diagnostics.get('v_star_search', '')}")
    mean_editguard = statistics.mean(result.seconds for result, _ in results)
    emit(f"mean per case: {mean_editguard:.2f}s over {len(results)} cases")
    emit(f"load after: {load()}")
    summary = {"editguard": [result.seconds for result, _ in results], "reference": []}
    if not args.reference:
        write_summary(args.summary, summary)
        return

    emit("\nreference path (papers' algorithm: full forward/backward per v* step, float32, ppl.py batching)")
    emit(f"{'case':<32}" + "".join(f"{c:>11}" for c in REFERENCE_COLUMNS) + f"{'total':>11}{'v steps':>9}"
         + f"{'ΔW rel diff':>13}{'ppl ref':>10}{'ppl eg':>10}{'ppl rel diff':>14}{'speedup':>9}")
    worst_dw, worst_ppl, ratios = 0.0, 0.0, []
    for case, (result, delta_w), (ref_dw, ref_ppl, steps, timings, total) in zip(cases, results, reference_runs):
        dw_rel = float((delta_w - ref_dw).norm() / ref_dw.norm())
        ppl_rel = abs(result.ppl - ref_ppl) / ref_ppl
        worst_dw, worst_ppl = max(worst_dw, dw_rel), max(worst_ppl, ppl_rel)
        ratios.append(total / result.seconds)
        name = (case.case_id + " " + case.subject)[:31]
        emit(f"{name:<32}" + "".join(f"{timings[c]:>11.2f}" for c in REFERENCE_COLUMNS)
             + f"{total:>11.2f}{steps:>9}{dw_rel:>13.2e}{ref_ppl:>10.2f}{result.ppl:>10.2f}{ppl_rel:>14.2e}"
             + f"{ratios[-1]:>8.2f}×")
    mean_reference = statistics.mean(run[-1] for run in reference_runs)
    write_summary(args.summary, {**summary, "reference": [run[-1] for run in reference_runs]})
    emit(f"largest relative difference: ΔW {worst_dw:.2e}, ME-PPL_50 {worst_ppl:.2e}")
    emit(f"editguard {mean_editguard:.2f} s/case; reference path {mean_reference:.2f} s/case; "
         f"speedup {mean_reference / mean_editguard:.2f}× (per case: {min(ratios):.2f}× to {max(ratios):.2f}×)")


def write_summary(path: str | None, summary: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(summary, f)


def run_workers(args, emit) -> None:
    """--workers N: N copies of this bench side by side on disjoint cases, each on its share of the
    CPUs; their tables, then the mean seconds per case over all of them."""
    cpus = available_cpus()
    threads = args.threads or threads_per_worker(args.workers, {}, cpus)   # as the plugin's xdist workers
    emit(f"# python bench/case_timing.py --editor {args.editor} --model {args.model} --cases {args.cases} "
         f"--workers {args.workers}{' --reference' if args.reference else ''}{' --alone' if args.alone else ''} "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    emit(f"{args.workers} copies side by side, {threads} torch thread(s) each, on {cpus} CPUs; load before: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        procs, start = [], time.perf_counter()
        for i in range(args.workers):
            cmd = [sys.executable, os.path.abspath(__file__), "--editor", args.editor, "--model", args.model,
                   "--cases", str(args.cases), "--first", str(args.first + i * args.cases), "--threads", str(threads),
                   "--out", os.path.join(tmp, f"{i}.txt"), "--summary", os.path.join(tmp, f"{i}.json")]
            cmd += ["--data", args.data] if args.data else []
            cmd += ["--reference"] if args.reference else []
            cmd += ["--alone"] if args.alone else []
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - start
        summaries = []
        for i, code in enumerate(codes):
            emit(f"\n## copy {i + 1} of {args.workers} (exit {code})")
            with open(os.path.join(tmp, f"{i}.txt")) as f:
                emit(f.read().rstrip())
            if code:
                raise SystemExit(f"copy {i + 1} failed (exit {code})")
            with open(os.path.join(tmp, f"{i}.json")) as f:
                summaries.append(json.load(f))
    editguard = [s for summary in summaries for s in summary["editguard"]]
    line = (f"\nall {len(editguard)} cases, {args.workers} copies side by side ({wall:.0f} s wall): "
            f"editguard {statistics.mean(editguard):.2f} s/case")
    reference = [s for summary in summaries for s in summary["reference"]]
    if reference:
        ratios = [r / e for e, r in zip(editguard, reference)]
        line += (f"; reference path {statistics.mean(reference):.2f} s/case; speedup "
                 f"{statistics.mean(reference) / statistics.mean(editguard):.2f}× "
                 f"(per case: {min(ratios):.2f}× to {max(ratios):.2f}×)")
    emit(line)
    emit(f"load after: {load()}")


if __name__ == "__main__":
    main()
