"""What an editor is and what an edit reports; imports no editor.

A user's editing algorithm is one class with `name`, `touched_parameters` and `apply`:

    class ScaleRow:
        name = "scale-row"
        def touched_parameters(self, model, cases):
            return [model.family.rewrite_weight(model.edit_layer)]
        def apply(self, model, cases):
            w = model.parameter(self.touched_parameters(model, cases)[0])
            with torch.no_grad():
                w[0] *= 100
            return EditReport(touched=self.touched_parameters(model, cases))

and is selected with `--editor=package.module:ScaleRow` or registered under the entry point
group `editguard.editors` (see editguard.editors.registry).

Optional parts are declared as protocols of their own: `hparams(model)` (the values an edit
runs with, for the report: `HasHparams`), `reset()` (an editor with memory across sequential
edits, such as AlphaEdit: `Resettable`), `prepare(model)` (`NeedsPreparation`), `statistics(model)`
(`UsesStatistics`: which second-moment statistics the edits use, for the report), `upcoming(cases)`
(the cases the next single edits will get, to prepare with this one: `SearchesAhead`) and the class
attribute `batch_edits = True` (several cases per `apply`: `BatchEditing`). Callers go through
`editor_hparams`, `reset_editor`, `prepare_editor`, `editor_statistics`, `tell_upcoming` and
`edits_in_batches`, never through hasattr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from editguard.errors import EditorError

if TYPE_CHECKING:  # annotations only: the registry reads this module without importing torch
    import torch

    from editguard.cases import EditCase
    from editguard.models.loading import ModelUnderEdit


@dataclass
class EditReport:
    """What an editor did: the parameters it changed and its own diagnostics.

    `diagnostics` holds JSON-able numbers (ROME: numerator and denominators, key cosine,
    update norms, v* norm); `vectors` holds tensors for analysis (k̄, kᵘ, v*), never serialised.
    """

    touched: list[str]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    # A prefix the editor wants prepended to prompts when its edit is tested (C-ROME's cure).
    test_prefix: str = ""


@runtime_checkable
class Editor(Protocol):
    """The required part of every editor."""

    name: str

    def touched_parameters(self, model: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        """Names of the parameters `apply` may change; the harness snapshots them first."""

    def apply(self, model: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        """Edit the weights in place so that each case's prompt yields its target_new."""


@runtime_checkable
class HasHparams(Protocol):
    """Optional: an editor that reports the hyperparameters it uses on a model."""

    def hparams(self, model: ModelUnderEdit) -> dict[str, Any]:
        """The hyperparameters used on this model, for the report (raises on bad overrides)."""


@runtime_checkable
class Resettable(Protocol):
    """Optional: an editor with memory across sequential edits (AlphaEdit's preserved keys)."""

    def reset(self) -> None:
        """Forget earlier edits: the next edit starts from the unedited model."""


@runtime_checkable
class NeedsPreparation(Protocol):
    """Optional: an editor that needs something before its first edit on a model (MEND: a trained
    network); `prepare` raises EditorNotReady saying what to run."""

    def prepare(self, model: ModelUnderEdit) -> None:
        """Load what the edits need, or raise EditorNotReady."""


@runtime_checkable
class UsesStatistics(Protocol):
    """Optional: an editor that weighs its update by second-moment statistics C (ROME with
    mom2_adjustment, MEMIT, AlphaEdit) says where they come from."""

    def statistics(self, model: ModelUnderEdit) -> str:
        """C found (or computed) and checked, or why none is needed; the run header's sentence."""


@runtime_checkable
class BatchEditing(Protocol):
    """Optional: an editor whose `apply` edits several cases in one call (MEMIT, AlphaEdit, FT-L∞,
    MEND) says so with a class attribute `batch_edits = True`; any other editor is given one case
    per call (--batch-size 1)."""

    batch_edits: bool


@runtime_checkable
class SearchesAhead(Protocol):
    """Optional: an editor that can prepare the edits it will be given next. Before a single edit's
    `apply`, the harness tells it the cases the next single edits will get (each on the model as it
    is now: the harness puts the model back after every edit); ROME searches their v* in one batch
    with the current case's. What it prepares must only be used on the model it was prepared on."""

    def upcoming(self, cases: Sequence[EditCase]) -> None:
        """The cases of the next single edits, in order (copies: changing them changes nothing)."""


def tell_upcoming(editor: Editor, cases: Sequence[EditCase]) -> None:
    """Tell an editor that searches ahead which cases come next; any other editor needs nothing."""
    if isinstance(editor, SearchesAhead):
        editor.upcoming(cases)


def edits_in_batches(editor: Editor) -> bool:
    return isinstance(editor, BatchEditing) and bool(editor.batch_edits)


def check_batch_size(editor: Editor, batch_size: int) -> None:
    """ValueError naming the editor when it cannot apply `batch_size` cases in one call."""
    if batch_size > 1 and not edits_in_batches(editor):
        name = getattr(editor, "name", type(editor).__name__)
        raise ValueError(f"--batch-size {batch_size}: editor '{name}' applies one case per edit (it does not declare "
                         f"batch_edits = True); use --batch-size 1, or an editor that edits in batches such as "
                         f"--editor=memit (also alphaedit, ft, mend)")


class EditorNotReady(EditorError, LookupError):
    """The editor cannot edit this model yet; the message says what to run first."""


REQUIRED_EDITOR_PARTS = ("name", "touched_parameters", "apply")


def prepare_editor(editor: Editor, model: ModelUnderEdit) -> None:
    """Get an editor ready for `model` before any edit (no-op for editors that need nothing)."""
    if isinstance(editor, NeedsPreparation):
        editor.prepare(model)


def editor_hparams(editor: Editor, model: ModelUnderEdit) -> dict[str, Any]:
    """The editor's hyperparameters on `model`, or {} for an editor that reports none."""
    return editor.hparams(model) if isinstance(editor, HasHparams) else {}


def editor_statistics(editor: Editor, model: ModelUnderEdit) -> str:
    """Which second-moment statistics the editor's edits use on `model`, or that none are needed."""
    if isinstance(editor, UsesStatistics):
        return editor.statistics(model)
    return f"none declared by editor {getattr(editor, 'name', type(editor).__name__)!r}"


def reset_editor(editor: Editor) -> None:
    """Reset an editor with memory; a stateless editor needs nothing."""
    if isinstance(editor, Resettable):
        editor.reset()


class EditorNotFound(EditorError, LookupError):
    """An --editor that names no built-in, entry point or importable class."""


def checked_report(editor: Editor, report: Any) -> EditReport:
    """What `editor.apply` returned, checked: an EditReport whose `touched` is a list of names and
    whose diagnostics are JSON-able; else ValueError naming the editor and what to return."""
    import json

    name = getattr(editor, "name", type(editor).__name__)
    if not isinstance(report, EditReport):
        raise ValueError(f"editor {name!r}: apply() returned {type(report).__name__}, expected an "
                         f"editguard.EditReport(touched=[...], diagnostics={{...}})")
    if not isinstance(report.touched, list) or not all(isinstance(t, str) for t in report.touched):
        raise ValueError(f"editor {name!r}: EditReport.touched must be a list of parameter names, "
                         f"got {report.touched!r:.80}")
    try:
        json.dumps(report.diagnostics, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"editor {name!r}: EditReport.diagnostics must be JSON-able numbers and strings "
                         f"(tensors as float(...)): {err}") from None
    return report
