"""editguard's downstream numbers against lm-evaluation-harness itself, on the same weights and items.

    python bench/lm_eval_parity.py --model smollm2-135m --limit 100 \
        [--tasks piqa,hellaswag,lambada,mmlu,mmlu-5shot,nq-open] [--out bench/results/lm-eval-parity-MODEL.json]

Needs lm-eval 0.4.13 (`pip install -e '.[parity]'`, in a venv of its own: see docs/notes/lmeval.md) and
EDITGUARD_DATA. The model editguard loads is saved as a local Hugging Face directory (float32,
safetensors) and lm-eval's HF backend loads that directory; lm-eval reads the data directory's local
copies through the task configs in bench/lm_eval_tasks/ (no network). Both take the first N items of
each task (lm-eval's --limit; per subject for MMLU) and score them in float32 on the CPU.

Prints, per task and metric, editguard's number, lm-eval's and their difference (absolute for
accuracies, exact match and stderrs; relative for perplexities), the items whose right/wrong differs,
for NQ-open the items whose generated text differs (lm-eval's logged response, cut at `until`,
against editguard's; the JSON keeps the first ten with both texts), and both wall and CPU times.
With --out, the tasks run are merged into that JSON (a long measurement can be
run task by task); the table and the last line cover every task in it. The last line is
`lm-eval parity on MODEL: max |difference| X over N metrics (worst: TASK METRIC)`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def save_model(mue, root: Path) -> Path:
    """The weights editguard loaded, as a local HF directory (written once per model fingerprint)."""
    out = root / f"{mue.name}-{mue.fingerprint[:12]}"
    if not (out / "config.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        mue.model.save_pretrained(tmp, safe_serialization=True)
        mue.tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    return out


CATEGORIES = ("stem", "other", "social_sciences", "humanities")


def lm_eval_task(name: str, category: str | None = None) -> tuple[str, int]:
    from editguard.tasks import LM_EVAL_NAMES

    lm_name, shots, _ = LM_EVAL_NAMES[name]
    return f"editguard_{lm_name}" + (f"_{category}" if category else ""), shots


def run_lm_eval(lm, name: str, limit: int, bootstrap_iters: int, category: str | None):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task, shots = lm_eval_task(name, category)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    start, cpu = time.perf_counter(), time.process_time()
    out = simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, limit=limit, task_manager=manager,
                          log_samples=True, bootstrap_iters=bootstrap_iters)
    return out, time.perf_counter() - start, time.process_time() - cpu


def _metrics(entry: dict, prefix: str = "") -> dict:
    # lm-eval's entries also hold "alias", "name", "sample_len": the metrics are the "metric,filter" keys
    return {prefix + k: v for k, v in entry.items() if "," in k}


def lm_eval_numbers(name: str, out: dict, category: str | None) -> dict[str, float | str]:
    """lm-eval's numbers under the names editguard_numbers uses (MMLU: group and categories)."""
    task, _ = lm_eval_task(name)
    numbers = {}
    for key, entry in out["results"].items():
        part = key.removeprefix(task + "_") if key.startswith(task + "_") else None
        if key == task and not category:
            numbers.update(_metrics(entry))
        elif name.startswith("mmlu") and part in CATEGORIES and (category in (None, part)):
            numbers.update(_metrics(entry, part + " "))
    return numbers


def editguard_numbers(name: str, score, category: str | None) -> dict[str, float | str]:
    from editguard.metrics.lm_eval import lm_eval_results

    layout = lm_eval_results({name: score})
    lm_name = next(iter(layout["results"]))
    numbers = {} if category else _metrics(layout["results"][lm_name])
    for part in CATEGORIES:
        if category in (None, part):
            numbers.update(_metrics(layout["results"].get(f"{lm_name}_{part}", {}), part + " "))
    return numbers


def item_agreement(name: str, items: list, score, samples: dict) -> dict[str, dict[str, int]]:
    """Per metric: items compared and items whose right/wrong differs between the two."""
    from editguard.tasks import lm_eval_exact_match

    task, _ = lm_eval_task(name)
    per_item = score.extra["per_item"]
    if name.startswith("mmlu"):
        rows = []
        by_subject: dict[str, list] = {}
        for item, pred in zip(items, per_item):
            by_subject.setdefault(item.group, []).append((item, pred))
        for subject, pairs in by_subject.items():
            theirs = sorted(samples[f"{task}_{subject}"], key=lambda s: s["doc_id"])
            rows += [("acc", int(p[0] == i.gold), t["acc"]) for (i, p), t in zip(pairs, theirs, strict=True)]
    else:
        theirs = sorted(samples[task], key=lambda s: s["doc_id"])
        rows = []
        for item, pred, t in zip(items, per_item, theirs, strict=True):
            if name == "lambada":
                rows.append(("acc", pred, t["acc"]))
            elif name == "nq-open":
                rows.append(("exact_match", int(lm_eval_exact_match(pred, item.answers)), t["exact_match"]))
                rows.append(("generation", pred, generated_text(t)))
            else:
                rows.append(("acc", int(pred[0] == item.gold), t["acc"]))
                rows.append(("acc_norm", int(pred[1] == item.gold), t["acc_norm"]))
    out: dict[str, dict[str, int]] = {}
    for metric, mine, lm in rows:
        entry = out.setdefault(metric, {"n": 0, "differ": 0})
        entry["n"] += 1
        entry["differ"] += int(mine != lm if isinstance(mine, str) else float(mine) != float(lm))
    return out


def generated_text(sample: dict) -> str:
    """lm-eval's generation of one logged sample: its response cut at `until`, before any filter."""
    resps = sample.get("resps")
    if not (isinstance(resps, list) and resps and isinstance(resps[0], list) and resps[0]
            and isinstance(resps[0][0], str)):
        raise ValueError(f"lm-eval sample doc_id {sample.get('doc_id')}: expected resps [[text]], got {resps!r:.80}")
    return resps[0][0]


def generation_differences(mine: list[str], samples: list[dict], keep: int = 10) -> list[dict]:
    """The first `keep` items whose generated text differs between editguard and lm-eval, with both
    texts (lm-eval's samples in any order; matched by doc_id, the item's index)."""
    theirs = sorted(samples, key=lambda s: s["doc_id"])
    if len(theirs) != len(mine):
        raise ValueError(f"{len(mine)} editguard generations against {len(theirs)} lm-eval samples")
    differ = [{"doc_id": t["doc_id"], "editguard": m, "lm_eval": generated_text(t)}
              for m, t in zip(mine, theirs) if m != generated_text(t)]
    return differ[:keep]


def compare(mine: dict, theirs: dict) -> dict[str, dict]:
    rows = {}
    for metric in sorted(set(mine) | set(theirs)):
        a, b = mine.get(metric), theirs.get(metric)
        relative = metric.split(",")[0].startswith("perplexity")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            diff = abs(a - b) / abs(b) if relative else abs(a - b)
        elif a == b:   # both "N/A"
            diff = 0.0
        else:
            diff = math.inf   # present on one side only, or a number against "N/A"
        rows[metric] = {"editguard": a, "lm_eval": b, "difference": diff,
                        "kind": "relative" if relative else "absolute"}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=100, help="first N items of each task (per MMLU subject)")
    parser.add_argument("--tasks", default="piqa,hellaswag,lambada,mmlu,mmlu-5shot,nq-open")
    parser.add_argument("--mmlu-category", choices=CATEGORIES, default=None,
                        help="MMLU tasks: only this category's subjects (a long 5-shot run split in four)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="lm-eval's HF backend batch size (its logits are batch × length × vocabulary)")
    parser.add_argument("--bootstrap-iters", type=int, default=100_000, help="lm-eval's default")
    parser.add_argument("--out", default=None, help="JSON to merge the results into")
    parser.add_argument("--model-dir", default=None, help="where the model is saved for lm-eval "
                                                         "(default $EDITGUARD_CACHE/lm-eval-parity)")
    parser.add_argument("--report", action="store_true", help="only print the table of --out (loads no model)")
    args = parser.parse_args()
    if args.report:
        if not args.out:
            raise SystemExit("--report prints the table of --out: give --out")
        report(json.loads(Path(args.out).read_text()))
        return
    if not os.environ.get("EDITGUARD_DATA"):
        raise SystemExit("set EDITGUARD_DATA to the data directory (laid out as shared/data)")

    from lm_eval.models.huggingface import HFLM

    from editguard.cache import cache_dir
    from editguard.metrics.downstream import evaluate, first_n
    from editguard.metrics.lm_eval import lm_eval_metrics
    from editguard.models import load_model
    from editguard.tasks import MMLU_CATEGORIES, get_task, parse_task_list

    tasks = parse_task_list(args.tasks)
    start = time.perf_counter()
    mue = load_model(args.model, "cpu", "float32")
    model_dir = save_model(mue, Path(args.model_dir) if args.model_dir else cache_dir() / "lm-eval-parity")
    editguard_load = time.perf_counter() - start
    start = time.perf_counter()
    lm = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=args.batch_size)
    lm_eval_load = time.perf_counter() - start

    out_path = Path(args.out) if args.out else None
    doc = json.loads(out_path.read_text()) if out_path and out_path.is_file() else {}
    if doc and doc.get("model") != args.model:
        raise SystemExit(f"{out_path} holds model {doc.get('model')}; this run is {args.model}: use another --out")
    doc.update(model=args.model, cpu=cpu_name(), precision="float32", bootstrap_iters=args.bootstrap_iters)
    doc.setdefault("tasks", {})
    doc.setdefault("load_seconds", {})[time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())] = {
        "editguard": editguard_load, "lm_eval": lm_eval_load}
    for name in tasks:
        category = args.mmlu_category if name.startswith("mmlu") else None
        start, cpu = time.perf_counter(), time.process_time()
        everything = get_task(name).load()
        items = [everything[i] for i in first_n(everything, args.limit)]
        if category:
            items = [i for i in items if i.group in MMLU_CATEGORIES[category]]
        score = evaluate(mue, name, items, precision="float32")
        mine_seconds, mine_cpu = time.perf_counter() - start, time.process_time() - cpu
        theirs, lm_seconds, lm_cpu = run_lm_eval(lm, name, args.limit, args.bootstrap_iters, category)
        mine = editguard_numbers(name, score, category)
        if name == "lambada":   # the bootstrap stderr of the perplexity, as lm-eval computes it
            mine.update({k: v for k, v in lm_eval_metrics(score, args.bootstrap_iters).items() if "perplexity" in k})
        key = f"{name}:{category}" if category else name
        doc["tasks"][key] = {
            "lm_eval_task": lm_eval_task(name, category)[0].removeprefix("editguard_"), "n": score.n,
            "limit": args.limit, "lm_eval_batch_size": args.batch_size,
            "metrics": compare(mine, lm_eval_numbers(name, theirs, category)),
            "items": item_agreement(name, items, score, theirs["samples"]),
            **({"generations_that_differ": generation_differences(
                score.extra["per_item"], theirs["samples"][lm_eval_task(name)[0]])} if name == "nq-open" else {}),
            "seconds": {"editguard": mine_seconds, "lm_eval": lm_seconds},
            "cpu_seconds": {"editguard": mine_cpu, "lm_eval": lm_cpu},
        }
        print(f"{key}: editguard {mine_seconds:.1f} s, lm-eval {lm_seconds:.1f} s", flush=True)
        if out_path:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = out_path.with_name(out_path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1, default=str))
            os.replace(tmp, out_path)
    report(doc)


def fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, (int, float)) else str(v)


def report(doc: dict) -> None:
    limits = ", ".join(f"{name} {task['limit']} ({task['n']} items)" for name, task in doc["tasks"].items())
    print(f"\n{doc['model']}, float32, {doc['cpu']}; --limit per task: {limits}")
    print(f"{'task':12} {'metric':40} {'editguard':>12} {'lm-eval':>12} {'difference':>12}")
    worst, count = (0.0, "", ""), 0
    for name, task in doc["tasks"].items():
        for metric, row in task["metrics"].items():
            a, b = row["editguard"], row["lm_eval"]
            kind = " rel" if row["kind"] == "relative" else ""
            print(f"{name:12} {metric:40} {fmt(a):>12} {fmt(b):>12} {row['difference']:>8.2g}{kind}")
            count += 1
            if row["difference"] >= worst[0] and (row["difference"] > worst[0] or not worst[1]):
                worst = (row["difference"], name, metric)
        items = ", ".join(f"{m} {e['differ']} of {e['n']}" for m, e in task["items"].items())
        s, c = task["seconds"], task.get("cpu_seconds")
        cpu = f"; CPU time editguard {c['editguard']:.1f} s, lm-eval {c['lm_eval']:.1f} s" if c else ""
        print(f"{name:12} items that differ: {items}; wall time editguard {s['editguard']:.1f} s, "
              f"lm-eval {s['lm_eval']:.1f} s ({s['lm_eval'] / max(s['editguard'], 1e-9):.1f}×){cpu}")
        for d in task.get("generations_that_differ", [])[:3]:
            print(f"{name:12} doc {d['doc_id']}: editguard {d['editguard']!r:.60}, lm-eval {d['lm_eval']!r:.60}")
    total_mine = sum(t["seconds"]["editguard"] for t in doc["tasks"].values())
    total_theirs = sum(t["seconds"]["lm_eval"] for t in doc["tasks"].values())
    print(f"total wall time: editguard {total_mine:.1f} s, lm-eval {total_theirs:.1f} s "
          f"(lm-eval takes {total_theirs / max(total_mine, 1e-9):.1f}× editguard's)")
    print(f"lm-eval parity on {doc['model']}: max |difference| {worst[0]:.3g} over {count} metrics "
          f"(worst: {worst[1]} {worst[2]})")


if __name__ == "__main__":
    main()
