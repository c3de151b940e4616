"""Downstream tasks as data: where each task's file lives, how a record becomes a prompt, what
counts as right, and what guessing scores. Scoring (editguard.metrics.downstream) has one path
per task kind, as in EleutherAI's lm-evaluation-harness:

- multiple_choice: log P(continuation | context) per choice; accuracy is the argmax (acc), or
  the argmax of log P / len(choice in characters) (acc_norm, HellaSwag).
- last_word: LAMBADA; right when every token of " " + last word is the greedy (argmax) token.
- generation: greedy decoding (at most 256 new tokens, lm-eval's HF default) until a stop string or
  end-of-text. NQ-open's exact match is lm-eval's (`lm_eval_exact_match`: strip, its article regex,
  ignore case and punctuation, no whitespace collapsing); SQuAD2's are the official SQuAD 2.0 script's
  (`squad2_metrics`). editguard's SQuAD-normalised exact match on NQ-open is kept as `exact_match_squad`.

Prompts follow lm-evaluation-harness (v0.4 task configs):
  PIQA       "Question: {goal}\\nAnswer:" + " {sol}"
  HellaSwag  "{activity_label}: {ctx_a} {ctx_b.capitalize()}" + " {ending}", acc_norm by the ending's
             character length
  MMLU       "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
             + k dev examples ("{question}\\nA. ..\\nD. ..\\nAnswer: {letter}\\n\\n") + the question
             with "Answer:", choices " A" .. " D"; the first k dev rows of the subject (first_n)
  LAMBADA    text minus its last word + " {last word}" (OpenAI's lambada_test.jsonl)
  NQ-open    "Answer these questions:\\n\\nQ: {question}?\\nA:", stops at newline, "." and ","
  SQuAD2     "Title: {title}\\n\\nBackground: {context}\\n\\nQuestion: {question}\\n\\nAnswer:", stops
             at newline; an empty answer is right for an unanswerable question
"""

from __future__ import annotations

import csv
import json
import os
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from editguard.data import DataError, data_file, read_json, resolve_data_dir

__all__ = [
    "GenItem", "MCItem", "TASKS", "Task", "exact_match", "f1_score", "get_task", "load_task",
    "normalize_answer", "parse_task_list", "task_name", "LM_EVAL_TASKS", "LM_EVAL_NAMES", "MMLU_CATEGORIES",
    "lm_eval_exact_match", "squad2_metrics",
]

MULTIPLE_CHOICE, LAST_WORD, GENERATION = "multiple_choice", "last_word", "generation"


@dataclass(frozen=True)
class MCItem:
    """A log-likelihood item: context and continuations (with their leading space). LAMBADA is
    one with a single continuation, the last word."""

    context: str
    choices: tuple[str, ...]
    gold: int = 0
    # acc_norm divides by these (the choice's characters without the delimiter space)
    norm_lengths: tuple[int, ...] = ()
    group: str = ""              # MMLU: the subject (lm-eval's subtask), for its group stderr and --limit


@dataclass(frozen=True)
class GenItem:
    prompt: str
    answers: tuple[str, ...]     # empty: unanswerable (SQuAD2); the right prediction is ""


@dataclass(frozen=True)
class Task:
    name: str
    kind: str                    # multiple_choice | last_word | generation
    metric: str                  # acc, acc_norm, exact_match
    files: tuple[str, ...]       # files or folders the task needs in the data directory
    reader: Callable[[Path], list] = field(repr=False)   # data directory -> items
    random: float | Callable[[list], float] = 0.0        # what guessing scores (may depend on the items)
    description: str = ""
    stop: tuple[str, ...] = ("\n",)
    max_new_tokens: int = 256    # lm-eval's HF backend: max_gen_toks 256

    def load(self, data_dir: str | os.PathLike | None = None) -> list:
        root = resolve_data_dir(data_dir)
        for rel in self.files:
            if not (root / rel).exists():
                data_file(rel, data_dir)   # raises the project's message: what is missing, where, how to fix
        return self.reader(root)

    def random_baseline(self, items: list) -> float:
        return self.random(items) if callable(self.random) else self.random


# --- readers: bad records raise DataError naming the file, the line or record, and the field ----

def _jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: not valid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def _text(path: Path, where: str, obj: dict, key: str, allow_empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        got = "no such field" if key not in obj else f"{type(value).__name__} {value!r:.60}"
        raise DataError(f"{path}: {where}, field '{key}': expected a non-empty string, got {got}")
    return value


def read_piqa(root: Path) -> list[MCItem]:
    path, labels_path = root / "piqa" / "valid.jsonl", root / "piqa" / "valid-labels.lst"
    rows = _jsonl(path)
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != len(rows):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(rows)} questions in {path}; they must align")
    items = []
    for (lineno, obj), (label_line, label) in zip(rows, enumerate(labels, 1)):
        goal, sol1, sol2 = (_text(path, f"line {lineno}", obj, k) for k in ("goal", "sol1", "sol2"))
        if label not in ("0", "1"):
            raise DataError(f"{labels_path}: line {label_line}: expected label 0 or 1, got {label!r}")
        items.append(MCItem(f"Question: {goal}\nAnswer:", (f" {sol1}", f" {sol2}"), int(label),
                            (len(sol1), len(sol2))))
    return items


def read_hellaswag(root: Path) -> list[MCItem]:
    """The text extraction of HellaSwag's validation split, 6 lines per item: "activity_label: ctx",
    the gold label 0-3, four endings (already preprocessed as lm-evaluation-harness does)."""
    path = root / "hellaswag" / "hellaswag_val_full.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines, not a multiple of 6 (context, label, four endings per item)")
    items = []
    for start in range(0, len(lines), 6):
        ctx, label, *endings = lines[start : start + 6]
        item_no = start // 6
        if not ctx.strip():
            raise DataError(f"{path}: line {start + 1} (item {item_no}), field 'context': empty")
        if label.strip() not in ("0", "1", "2", "3"):
            raise DataError(f"{path}: line {start + 2} (item {item_no}), field 'label': "
                            f"expected 0-3, got {label!r:.40}")
        for k, ending in enumerate(endings):
            if not ending.strip():
                raise DataError(f"{path}: line {start + 3 + k} (item {item_no}), field 'ending {k}': empty")
        items.append(MCItem(_capitalize_ctx_b(ctx), tuple(" " + e for e in endings), int(label),
                            tuple(len(e) for e in endings)))
    return items


def _capitalize_ctx_b(ctx: str) -> str:
    """lm-eval builds the context as ctx_a + " " + ctx_b.capitalize(); the text extraction kept
    the jsonl's joined `ctx`, where ctx_b (the start of the last sentence) is lowercase. Capitalize
    the first letter after the context's last sentence end when it is lowercase: ctx_b's first
    letter (the rest of ctx_b is lowercase already in nearly all items)."""
    head, sep, tail = ctx.rpartition(". ")
    if sep and tail[:1].islower():
        return head + sep + tail[:1].upper() + tail[1:]
    return ctx


def read_lambada(root: Path) -> list[MCItem]:
    path = root / "lambada" / "lambada_test.jsonl"
    items = []
    for lineno, obj in _jsonl(path):
        text = _text(path, f"line {lineno}", obj, "text")
        words = text.split(" ")
        if len(words) < 2 or not words[-1]:
            raise DataError(f"{path}: line {lineno}, field 'text': needs a context and a last word, got {text!r:.60}")
        items.append(MCItem(" ".join(words[:-1]), (" " + words[-1],)))
    return items


MMLU_LETTERS = ("A", "B", "C", "D")
_MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def _read_mmlu_csv(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != _MMLU_HEADER:
            raise DataError(f"{path}: expected the header {','.join(_MMLU_HEADER)}, got {header}")
        rows = []
        for record, row in enumerate(reader, 1):
            if len(row) != 6:
                raise DataError(f"{path}: record {record} (line {reader.line_num}): expected 6 fields, got {len(row)}")
            if row[5].strip() not in ("0", "1", "2", "3"):
                raise DataError(f"{path}: record {record} (line {reader.line_num}), field 'answer': "
                                f"expected 0-3, got {row[5]!r:.20}")
            rows.append((row[0], tuple(row[1:5]), int(row[5])))
    return rows


def mmlu_question(question: str, choices: tuple[str, ...]) -> str:
    lines = [question.strip()] + [f"{letter}. {c}" for letter, c in zip(MMLU_LETTERS, choices)]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_prompt(subject: str, question: str, choices: tuple[str, ...], shots: list) -> str:
    """lm-evaluation-harness's MMLU prompt: description, k solved dev examples, the question."""
    text = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    for q, c, a in shots:
        text += f"{mmlu_question(q, c)} {MMLU_LETTERS[a]}\n\n"
    return text + mmlu_question(question, choices)


def read_mmlu(root: Path, shots: int = 0) -> list[MCItem]:
    test_dir = root / "mmlu" / "test"
    files = sorted(test_dir.glob("*_test.csv"))
    if not files:
        raise DataError(f"{test_dir}: no *_test.csv files (MMLU's 57 subjects)")
    items = []
    for path in files:
        subject = path.name.removesuffix("_test.csv")
        dev = []
        if shots:
            dev_path = root / "mmlu" / "dev" / f"{subject}_dev.csv"
            if not dev_path.is_file():
                raise DataError(f"{dev_path} not found: {shots}-shot MMLU takes its examples from the dev split")
            dev = _read_mmlu_csv(dev_path)[:shots]
            if len(dev) < shots:
                raise DataError(f"{dev_path}: {len(dev)} rows, {shots}-shot MMLU needs {shots}")
        for question, choices, answer in _read_mmlu_csv(path):
            items.append(MCItem(mmlu_prompt(subject, question, choices, dev), tuple(" " + x for x in MMLU_LETTERS),
                                answer, (1, 1, 1, 1), subject))
    return items


def read_nq_open(root: Path) -> list[GenItem]:
    path = root / "nq-open" / "NQ-open.dev.jsonl"
    items = []
    for lineno, obj in _jsonl(path):
        question = _text(path, f"line {lineno}", obj, "question")
        answers = obj.get("answer")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}: line {lineno}, field 'answer': expected a non-empty list of strings, "
                            f"got {answers!r:.60}")
        items.append(GenItem(f"Answer these questions:\n\nQ: {question}?\nA:", tuple(answers)))
    return items


def squad2_prompt(title: str, context: str, question: str) -> str:
    return f"Title: {title}\n\nBackground: {context}\n\nQuestion: {question}\n\nAnswer:"


def read_squad2(root: Path) -> list[GenItem]:
    """SQuAD 2.0's official dev-v2.0.json: {"version", "data": [{"title", "paragraphs": [{"context",
    "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}."""
    path = root / "squad2" / "dev-v2.0.json"
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: expected an object with a list 'data' (SQuAD's dev-v2.0.json format)")
    items = []
    for a, article in enumerate(doc["data"]):
        where = f"data[{a}]"
        title = _text(path, where, article, "title")
        if not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: {where}, field 'paragraphs': expected a list")
        for p, para in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{p}]"
            context = _text(path, pwhere, para, "context")
            for q, qa in enumerate(para.get("qas") or []):
                qwhere = f"{pwhere}.qas[{q}] (id {qa.get('id', '?')})"
                question = _text(path, qwhere, qa, "question")
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{path}: {qwhere}, field 'is_impossible': "
                                    f"expected true or false, got {impossible!r}")
                answers = qa.get("answers")
                if not isinstance(answers, list) or any(not isinstance(x, dict) or not isinstance(x.get("text"), str)
                                                        for x in answers):
                    raise DataError(f"{path}: {qwhere}, field 'answers': "
                                    f"expected a list of {{\"text\", \"answer_start\"}}")
                texts = tuple(x["text"] for x in answers)
                if impossible and texts:
                    raise DataError(f"{path}: {qwhere}, field 'answers': an unanswerable question (is_impossible) "
                                    f"must have no answers (SQuAD keeps them under 'plausible_answers')")
                if not impossible and not texts:
                    raise DataError(f"{path}: {qwhere}, field 'answers': an answerable question needs at least one")
                items.append(GenItem(squad2_prompt(title, context, question), texts))
    return items


def _unanswerable_fraction(items: list[GenItem]) -> float:
    # Answering "" everywhere is right exactly on the unanswerable questions (~50% of dev v2.0).
    return sum(not i.answers for i in items) / len(items) if items else 0.0


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("piqa", MULTIPLE_CHOICE, "acc", ("piqa/valid.jsonl", "piqa/valid-labels.lst"), read_piqa, 0.5,
         "PIQA validation, 2 choices"),
    Task("hellaswag", MULTIPLE_CHOICE, "acc_norm", ("hellaswag/hellaswag_val_full.txt",), read_hellaswag, 0.25,
         "HellaSwag validation (text extraction), 4 endings, acc_norm"),
    Task("lambada", LAST_WORD, "acc", ("lambada/lambada_test.jsonl",), read_lambada, 0.0,
         "LAMBADA (OpenAI), last word greedy"),
    Task("mmlu", MULTIPLE_CHOICE, "acc", ("mmlu/test",), read_mmlu, 0.25,
         "MMLU test, 57 subjects, 0-shot"),
    Task("mmlu-5shot", MULTIPLE_CHOICE, "acc", ("mmlu/test", "mmlu/dev"),
         lambda root: read_mmlu(root, shots=5), 0.25, "MMLU test, 57 subjects, 5-shot from dev"),
    Task("nq-open", GENERATION, "exact_match", ("nq-open/NQ-open.dev.jsonl",), read_nq_open, 0.0,
         "NQ-open dev, greedy, exact match", stop=("\n", ".", ",")),
    Task("squad2", GENERATION, "exact_match", ("squad2/dev-v2.0.json",), read_squad2, _unanswerable_fraction,
         "SQuAD 2.0 dev, greedy, exact match and F1; random = answering '' everywhere"),
]}


# lm-evaluation-harness's task names (lm_eval --tasks) -> editguard's, by few-shot count
# (lm_eval --num_fewshot; written NAME:N here, e.g. mmlu:5). Their scores keep editguard's name.
LM_EVAL_TASKS: dict[str, dict[int, str]] = {
    "piqa": {0: "piqa"}, "hellaswag": {0: "hellaswag"}, "lambada_openai": {0: "lambada"},
    "mmlu": {0: "mmlu", 5: "mmlu-5shot"}, "nq_open": {0: "nq-open"}, "squadv2": {0: "squad2"},
}


# editguard's task -> (lm-eval's task name, its few-shot count, its task version): the keys of the
# --lm-eval-json layout. lm-eval's MMLU is a group (version 2) of 4 categories of 57 subject tasks.
LM_EVAL_NAMES: dict[str, tuple[str, int, float]] = {
    "piqa": ("piqa", 0, 1.0), "hellaswag": ("hellaswag", 0, 1.0), "lambada": ("lambada_openai", 0, 1.0),
    "mmlu": ("mmlu", 0, 2.0), "mmlu-5shot": ("mmlu", 5, 2.0), "nq-open": ("nq_open", 0, 4.0),
    "squad2": ("squadv2", 0, 3.0),
}

# MMLU's subjects by lm-eval's category groups (mmlu_stem, mmlu_other, mmlu_social_sciences,
# mmlu_humanities): the group stderr is pooled subject -> category -> mmlu.
MMLU_CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics", "machine_learning"),
    "other": ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
              "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
              "professional_accounting", "professional_medicine", "virology"),
    "social_sciences": ("econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"),
}


def task_name(name: str) -> str:
    """editguard's name of a task given by its own name or lm-evaluation-harness's, optionally with a
    few-shot count (`mmlu:5` -> mmlu-5shot); ValueError listing the valid names otherwise."""
    if name in TASKS:
        return name
    base, _, shots = name.partition(":")
    by_shots = LM_EVAL_TASKS.get(base) or ({0: base} if base in TASKS else None)
    if by_shots is None:
        raise ValueError(f"unknown downstream task '{name}'; valid: {', '.join(TASKS)} (or lm-evaluation-harness's "
                         f"{', '.join(LM_EVAL_TASKS)}, with :N for N-shot where editguard has it)")
    try:
        count = int(shots) if shots else 0
    except ValueError:
        raise ValueError(f"downstream task '{name}': the few-shot count after ':' must be an integer") from None
    if count not in by_shots:
        raise ValueError(f"downstream task '{name}': {base} is available {', '.join(f'{n}-shot' for n in by_shots)} "
                         f"(write {', '.join(f'{base}:{n}' for n in by_shots)})")
    return by_shots[count]


def get_task(name: str) -> Task:
    return TASKS[task_name(name)]


def parse_task_list(spec: str) -> list[str]:
    """'piqa, lambada_openai, mmlu:5' -> ['piqa', 'lambada', 'mmlu-5shot']: editguard's names, lm-evaluation-
    harness's accepted as aliases; unknown names raise with the valid ones listed."""
    names, unknown = [], []
    for raw in (s.strip() for s in spec.split(",") if s.strip()):
        try:
            names.append(task_name(raw))
        except ValueError:
            if raw.partition(":")[0] in TASKS or raw.partition(":")[0] in LM_EVAL_TASKS:
                raise   # a known task with a few-shot count editguard does not have: its own message
            unknown.append(raw)
    if unknown:
        raise ValueError(f"unknown downstream task(s) {', '.join(unknown)}; valid: {', '.join(TASKS)} "
                         f"(or lm-evaluation-harness's {', '.join(LM_EVAL_TASKS)}, with :N for N-shot where "
                         f"editguard has it)")
    if not names:
        raise ValueError(f"no downstream task named; valid: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def load_task(name: str, data_dir: str | os.PathLike | None = None) -> list:
    return get_task(name).load(data_dir)


# --- SQuAD's official answer normalisation, exact match and F1 -----------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD v1.1/v2.0)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: tuple[str, ...] | list[str]) -> bool:
    """Normalised equality with any gold answer; with no gold answers (unanswerable), the
    prediction must normalise to ""."""
    golds = [a for a in answers if normalize_answer(a)] or [""]
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golds)


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)     # SQuAD2: no-answer vs no-answer is 1, else 0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    golds = [a for a in answers if normalize_answer(a)] or [""]
    return max(_f1(prediction, g) for g in golds)


# --- lm-evaluation-harness's nq_open exact match ----------------------------------------------------

# nq_open.yaml: filter remove_whitespace (strip) then take_first; exact_match with regexes_to_ignore
# (applied first, case-sensitive), then ignore_case, then ignore_punctuation; nothing else: inner
# whitespace is compared as it is. Right when any gold answer matches.
_LM_EVAL_NQ_ARTICLES = re.compile(r"\b(?:The |the |An |A |The |a |an )")
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _lm_eval_nq_normalize(text: str) -> str:
    return _LM_EVAL_NQ_ARTICLES.sub("", text).lower().translate(_DROP_PUNCTUATION)


def lm_eval_exact_match(prediction: str, answers: tuple[str, ...] | list[str]) -> bool:
    """lm-eval's nq_open `exact_match,remove_whitespace` of one item: gold `A+` and prediction `A+`
    match (both `a`), where SQuAD's normalisation reduces `A+` to nothing."""
    pred = _lm_eval_nq_normalize(prediction.strip())
    return any(pred == _lm_eval_nq_normalize(a) for a in answers)


# --- the official SQuAD 2.0 evaluation (what lm-eval's squadv2 reports, in percent) -----------------

def squad2_metrics(predictions: list[str], answers: list[tuple[str, ...]], no_answer_probs: list[float]) -> dict:
    """exact, f1, HasAns_/NoAns_ (only where such questions are present) and best_exact/best_f1: the
    no-answer threshold on `no_answer_probs` (lm-eval: P(" unanswerable" | prompt)) that scores best,
    a prediction above it counting as "no answer"."""
    exact = [float(exact_match(p, a)) for p, a in zip(predictions, answers)]
    f1 = [f1_score(p, a) for p, a in zip(predictions, answers)]
    n = len(predictions)
    if not n:
        return {}
    has = [bool(a) for a in answers]
    out = {"exact": 100.0 * sum(exact) / n, "f1": 100.0 * sum(f1) / n}
    for name, want in (("HasAns", True), ("NoAns", False)):
        picked = [i for i in range(n) if has[i] == want]
        if picked:
            out[f"{name}_exact"] = 100.0 * sum(exact[i] for i in picked) / len(picked)
            out[f"{name}_f1"] = 100.0 * sum(f1[i] for i in picked) / len(picked)
    order = sorted(range(n), key=lambda i: no_answer_probs[i])   # stable, as the script's sorted()
    for name, raw in (("exact", exact), ("f1", f1)):
        score = best = float(sum(not h for h in has))
        for i in order:
            score += raw[i] if has[i] else (-1.0 if predictions[i] else 0.0)
            best = max(best, score)
        out[f"best_{name}"] = 100.0 * best / n
    return out
