"""editguard's downstream scores and lm-evaluation-harness's view of them: TaskScore, lm-eval's
metrics under lm-eval's keys (its stderrs: the sample stderr of a mean, MMLU's pooled group stderr,
LAMBADA's bootstrap perplexity stderr) and lm-eval's results layout (--lm-eval-json). Pure Python:
the recorder writes the layout from case records without loading torch."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

from editguard.stats import Z_ONE_SIDED_95, proportion_stderr, wilson_interval
from editguard.tasks import GENERATION, LM_EVAL_NAMES, MMLU_CATEGORIES, get_task

# TaskScore.extra's per-item lists: kept for the lm-eval JSON and the parity bench, left out of
# the per-case report (which keeps MMLU's per-subject counts, "groups", for the pooled stderr).
PER_ITEM_KEYS = ("examples", "per_item", "loglikelihoods", "groups")
_RECORD_SKIPS = ("examples", "per_item", "loglikelihoods")


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str                 # the gated metric: acc, acc_norm or exact_match
    n: int
    correct: int                # items right under `metric`
    random: float               # what guessing scores on these items
    extra: dict = field(default_factory=dict)   # acc beside acc_norm, SQuAD2's F1, ...
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def interval(self, z: float = Z_ONE_SIDED_95) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n, z)

    def to_dict(self) -> dict:
        low, high = self.interval()
        return {**asdict(self), "accuracy": self.accuracy, "wilson_low": low, "wilson_high": high}

    @classmethod
    def from_record(cls, name: str, d: dict) -> "TaskScore":
        """The score back from a case record's downstream entry (`score_record`)."""
        return cls(name, d["metric"], d["n"], d["correct"], d["random"], dict(d.get("extra") or {}))

    @classmethod
    def from_dict(cls, d: dict) -> "TaskScore":
        return cls(d["task"], d["metric"], d["n"], d["correct"], d["random"], d.get("extra", {}), d.get("seconds", 0.0))



# --- lm-evaluation-harness's keys and results layout ------------------------------------------------

def lm_eval_mean_stderr(successes: float, n: int) -> float | str:
    """lm-eval's `mean_stderr` of n 0/1 scores (sample standard deviation over √n); "N/A" below 2 items."""
    return proportion_stderr(round(successes), n) if n >= 2 else "N/A"


def lm_eval_pooled_stderr(stderrs: list, sizes: list[int]) -> float | str:
    """lm-eval's `pooled_sample_stderr` of a group (weight_by_size): Σ (nᵢ − 1) nᵢ seᵢ² / (Σ nᵢ − k), over Σ nᵢ,
    square-rooted; over a group's leaf tasks (MMLU and each category: its subjects). "N/A" if a part has none."""
    if not sizes or any(isinstance(e, str) for e in stderrs) or sum(sizes) <= len(sizes):
        return "N/A"
    var = sum((n - 1) * e ** 2 * n for e, n in zip(stderrs, sizes)) / (sum(sizes) - len(sizes))
    return math.sqrt(var / sum(sizes))


def lm_eval_bootstrap_stderr(statistic, xs: list[float], iters: int = 100_000) -> float:
    """lm-eval's `bootstrap_stderr`: iters // 1000 chunks of 1000 resamples, chunk i drawn with
    random.Random(i); the sample standard deviation of the statistic over all resamples."""
    values = []
    for chunk in range(iters // 1000):
        rnd = random.Random(chunk)
        values.extend(statistic(rnd.choices(xs, k=len(xs))) for _ in range(1000))
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _perplexity(lls: list[float]) -> float:
    return math.exp(-sum(lls) / len(lls))


def _mmlu_levels(groups: dict[str, list[int]]) -> tuple[dict, dict]:
    """(per subject, per category) {name: (n, acc, stderr)} from {subject: [n, right]}; a category's
    stderr is pooled over its subjects."""
    subjects = {s: (n, right / n, lm_eval_mean_stderr(right, n)) for s, (n, right) in sorted(groups.items())}
    categories = {}
    for category, members in MMLU_CATEGORIES.items():
        parts = [subjects[s] for s in members if s in subjects]
        if parts:
            size = sum(n for n, _, _ in parts)
            categories[category] = (size, sum(n * a for n, a, _ in parts) / size,
                                    lm_eval_pooled_stderr([e for _, _, e in parts], [n for n, _, _ in parts]))
    return subjects, categories


def lm_eval_metrics(score: TaskScore, bootstrap_iters: int = 0) -> dict[str, float | str]:
    """The score under lm-evaluation-harness's keys ("metric,filter"), lm-eval's metric exactly:
    PIQA/HellaSwag acc and acc_norm; LAMBADA acc and perplexity (its bootstrap stderr only with
    bootstrap_iters, lm-eval's default being 100,000); MMLU acc with the stderr pooled over the
    subjects as lm-eval pools a group (no acc_norm); NQ-open exact_match,remove_whitespace;
    SQuAD2 the official script's eight numbers, in percent, with stderr "N/A" as lm-eval has it."""
    n, extra = score.n, score.extra
    if score.task == "nq-open":
        return {"exact_match,remove_whitespace": score.accuracy,
                "exact_match_stderr,remove_whitespace": lm_eval_mean_stderr(score.correct, n)}
    if score.task == "squad2":
        out: dict[str, float | str] = {}
        for key, value in extra.get("squad2", {}).items():
            out[f"{key},none"], out[f"{key}_stderr,none"] = value, "N/A"
        return out
    acc = extra.get("acc", score.accuracy)
    out = {"acc,none": acc, "acc_stderr,none": lm_eval_mean_stderr(acc * n, n)}
    if "groups" in extra:   # MMLU: lm-eval 0.4.13 pools a group's stderr over its leaf tasks, the subjects
        subjects, _ = _mmlu_levels(extra["groups"])
        out["acc_stderr,none"] = lm_eval_pooled_stderr([e for _, _, e in subjects.values()],
                                                       [n for n, _, _ in subjects.values()])
        return out
    if "perplexity" in extra:   # LAMBADA
        out["perplexity,none"] = extra["perplexity"]
        if bootstrap_iters and extra.get("loglikelihoods"):
            out["perplexity_stderr,none"] = lm_eval_bootstrap_stderr(_perplexity, extra["loglikelihoods"],
                                                                     bootstrap_iters)
        return out
    if "acc_norm" in extra:
        out["acc_norm,none"] = extra["acc_norm"]
        out["acc_norm_stderr,none"] = lm_eval_mean_stderr(extra["acc_norm"] * n, n)
    return out


_LM_EVAL_TASK_CONFIG = {
    "multiple_choice": {"output_type": "multiple_choice"},
    "last_word": {"output_type": "loglikelihood"},
    "generation": {"output_type": "generate_until"},
}


def lm_eval_results(scores: dict[str, TaskScore], originals: dict[str, dict[str, int]] | None = None,
                    bootstrap_iters: int = 100_000, config: dict | None = None) -> dict:
    """Scores in lm-evaluation-harness's results layout ({"results", "groups", "group_subtasks",
    "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config"}), keyed by lm-eval's
    task names (MMLU with its categories and subjects, as lm-eval writes a group). `originals`: the
    full data set's size per task, per subject for MMLU ({"": n} otherwise)."""
    originals = originals or {}
    out: dict = {"results": {}, "groups": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                 "higher_is_better": {}, "n-samples": {}, "config": dict(config or {})}
    for name, score in scores.items():
        task = get_task(name)
        lm_name, shots, version = LM_EVAL_NAMES.get(name, (name, 0, 1.0))
        if lm_name in out["results"]:   # mmlu and mmlu-5shot in one run: lm-eval has one name for both
            lm_name = f"{lm_name}_{shots}shot"
        metrics = lm_eval_metrics(score, bootstrap_iters)
        better = {k.split(",")[0]: not k.startswith("perplexity") for k in metrics if "_stderr" not in k}
        out["results"][lm_name] = {"alias": lm_name, **metrics}
        out["versions"][lm_name], out["n-shot"][lm_name] = version, shots
        out["higher_is_better"][lm_name] = better
        config_entry = {"task": lm_name, **_LM_EVAL_TASK_CONFIG[task.kind], "num_fewshot": shots,
                        "metric_list": [{"metric": m, "higher_is_better": b} for m, b in better.items()],
                        "metadata": {"version": version, "editguard_task": name}}
        if task.kind == GENERATION:
            config_entry["generation_kwargs"] = {"until": list(task.stop), "do_sample": False,
                                                 "max_gen_toks": task.max_new_tokens}
        if "groups" not in score.extra:
            out["configs"][lm_name] = config_entry
            out["n-samples"][lm_name] = {"original": originals.get(name, {}).get("", score.n), "effective": score.n}
            continue
        subjects, categories = _mmlu_levels(score.extra["groups"])
        out["groups"][lm_name] = dict(out["results"][lm_name])
        out["group_subtasks"][lm_name] = []
        for category, (size, acc, stderr) in categories.items():
            group = f"{lm_name}_{category}"
            out["group_subtasks"][lm_name].append(group)
            out["results"][group] = out["groups"][group] = {"alias": f" - {category}", "acc,none": acc,
                                                              "acc_stderr,none": stderr}
            out["versions"][group], out["n-shot"][group] = version, shots
            members = [s for s in MMLU_CATEGORIES[category] if s in subjects]
            out["group_subtasks"][group] = [f"{lm_name}_{s}" for s in members]
            for subject in members:
                sub = f"{lm_name}_{subject}"
                n, acc, stderr = subjects[subject]
                out["results"][sub] = {"alias": f"  - {subject.replace('_', ' ')}", "acc,none": acc,
                                       "acc_stderr,none": stderr}
                out["versions"][sub], out["n-shot"][sub] = 1.0, shots
                out["higher_is_better"][sub] = {"acc": True}
                out["configs"][sub] = {**config_entry, "task": sub,
                                       "metadata": {"version": 1.0, "editguard_task": name}}
                out["n-samples"][sub] = {"original": originals.get(name, {}).get(subject, n), "effective": n}
    return out


def original_sizes(items: list) -> dict[str, int]:
    """A data set's size per subject ({"": n} for a task without subjects), for lm-eval's n-samples."""
    sizes: dict[str, int] = {}
    for item in items:
        group = getattr(item, "group", "")
        sizes[group] = sizes.get(group, 0) + 1
    return sizes


def score_record(score: TaskScore) -> dict:
    """A score as a case record holds it: accuracy, n, correct, metric, random, the extras flat (but
    per-item lists) and under "extra", and lm-eval's keys."""
    extra = {k: v for k, v in score.extra.items() if k not in _RECORD_SKIPS}
    return {"accuracy": score.accuracy, "n": score.n, "correct": score.correct, "metric": score.metric,
            "random": score.random, **{k: v for k, v in extra.items() if k != "groups"}, "extra": extra,
            **lm_eval_metrics(score)}


def write_lm_eval_json(path, scores: dict[str, TaskScore], originals: dict | None, config: dict,
                       post_edit: dict[str, dict[str, TaskScore]] | None = None) -> None:
    """lm-evaluation-harness's results layout at `path` (written atomically): the top level holds
    `scores` (the unedited model, or the only state a run scored); with `post_edit`, the key
    "post_edit" holds one such layout per edit (case id or step) for the edited model's scores."""
    import json
    from pathlib import Path

    from editguard.cache import write_atomic

    doc = lm_eval_results(scores, originals, config=config)
    if post_edit is not None:
        doc["post_edit"] = {key: lm_eval_results(s, originals, config={**config, "editguard_state": f"after {key}"})
                            for key, s in post_edit.items()}
    write_atomic(Path(path), json.dumps(doc, indent=1, default=str).encode("utf-8"))


def lm_eval_json_from_records(path, cases: list[dict], config: dict) -> bool:
    """--editguard-lm-eval-json from a run's case records: the unedited scores (every record holds
    them) at the top level, each case's post-edit scores under "post_edit" by case id (and step
    in a sequence). False, and nothing written, when no case has downstream scores."""
    scored = [c for c in cases if c.get("downstream")]
    if not scored:
        return False
    unedited = {name: TaskScore.from_record(name, d["unedited_score"])
                for name, d in scored[0]["downstream"].items()}
    post = {}
    for c in scored:
        key = c.get("case_id", "?") + (f"@step{c['step']}" if c.get("step") else "")
        post[key] = {name: TaskScore.from_record(name, d) for name, d in c["downstream"].items()}
    write_lm_eval_json(path, unedited, None, {**config, "editguard_state": "unedited"}, post)
    return True
