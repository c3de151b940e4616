"""Loaders for bench/lm_eval_parity.py's lm-eval tasks: the data directory's local copies
($EDITGUARD_DATA, laid out as shared/data) turned into the documents lm-eval's own task
configs expect, so lm-eval runs without the network. Written for this bench (read by lm-eval's
`custom_dataset`); it parses the raw files itself and shares no code with editguard's readers,
so the parity bench also checks editguard's prompt building.
"""

import csv
import json
import os
import re
from pathlib import Path

import datasets


def _root() -> Path:
    root = os.environ.get("EDITGUARD_DATA")
    if not root:
        raise RuntimeError("set EDITGUARD_DATA to the data directory (laid out as shared/data)")
    return Path(root)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _splits(**splits) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def piqa(**kwargs) -> datasets.DatasetDict:
    rows = _jsonl(_root() / "piqa" / "valid.jsonl")
    labels = (_root() / "piqa" / "valid-labels.lst").read_text().split()
    return _splits(validation=[{**r, "label": int(x)} for r, x in zip(rows, labels)])


def _hellaswag_clean(text: str) -> str:
    # the text extraction is already cleaned of WikiHow's [tags]; the same steps again are no-ops
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag(**kwargs) -> datasets.DatasetDict:
    """6 lines per item: "activity_label: ctx", label, 4 endings. The jsonl's ctx is ctx_a + " " + ctx_b
    with ctx_b (the last sentence's start) lowercase; the HF task builds ctx_a + " " + ctx_b.capitalize(),
    so ctx_b is taken back as what follows the context's last ". "."""
    lines = (_root() / "hellaswag" / "hellaswag_val_full.txt").read_text(encoding="utf-8").split("\n")
    docs = []
    for start in range(0, len(lines) - 5, 6):
        ctx, label, *endings = lines[start : start + 6]
        head, sep, tail = ctx.rpartition(". ")
        if sep and tail[:1].islower():
            ctx = head + sep + tail.capitalize()
        docs.append({"query": _hellaswag_clean(ctx), "choices": [_hellaswag_clean(e) for e in endings],
                     "label": int(label)})
    return _splits(validation=docs)


def lambada_openai(**kwargs) -> datasets.DatasetDict:
    return _splits(test=_jsonl(_root() / "lambada" / "lambada_test.jsonl"))


def nq_open(**kwargs) -> datasets.DatasetDict:
    rows = _jsonl(_root() / "nq-open" / "NQ-open.dev.jsonl")
    return _splits(validation=[{"question": r["question"], "answer": r["answer"]} for r in rows])


def _mmlu_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)   # question,choice0..choice3,answer
        return [{"question": r[0], "choices": r[1:5], "answer": int(r[5])} for r in reader]


def mmlu(subject: str, **kwargs) -> datasets.DatasetDict:
    root = _root() / "mmlu"
    return _splits(test=_mmlu_rows(root / "test" / f"{subject}_test.csv"),
                   dev=_mmlu_rows(root / "dev" / f"{subject}_dev.csv"))
