"""The run header: what a measurement ran on, built one way for the plugin and the CLI commands.

`RunHeader` (the header's schema) is in editguard.run.records; this module builds it from the
objects of a run.
"""

from __future__ import annotations

from typing import Any

from editguard.editors.api import editor_hparams, editor_statistics
from editguard.report.json_report import process_invocation
from editguard.run.records import RunHeader


def dtype_name(dtype) -> str:
    """'torch.float32' -> 'float32'."""
    return str(dtype).removeprefix("torch.")


def model_fields(mue) -> dict[str, Any]:
    """The header fields that say which model ran where."""
    return {"model": mue.name, "model_fingerprint": mue.fingerprint, "device": str(mue.device),
            "dtype": dtype_name(mue.dtype)}


def edit_run_info(mue, editor, baseline, thresholds, **fields: Any) -> RunHeader:
    """The header of a run that edits `mue` with `editor` and gates against `baseline`; `fields`
    are RunInfo's per-run ones (seed, suite, suite_source, sequential, shard). The seed defaults
    to the editor's template seed."""
    hparams = editor_hparams(editor, mue)
    fields.setdefault("seed", hparams.get("template_seed", 0))
    fields.setdefault("invocation", dict(process_invocation()))
    fields.setdefault("statistics", editor_statistics(editor, mue))
    return RunHeader(editor=editor.name, hparams=hparams, thresholds=thresholds.to_dict(),
                   baseline_ppl=baseline.ppl.ppl, baseline_corpus_ppl=baseline.ppl.corpus_ppl,
                   ppl_corpus=baseline.corpus, ppl_bos=baseline.ppl_bos,
                   edit_precision=baseline.ppl_precision, **model_fields(mue), **fields)
