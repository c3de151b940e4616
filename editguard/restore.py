"""Restore points: the whole model-under-edit state captured before an edit and put back after it,
verified, whatever the editor under test did.

    point = RestorePoint(mue, editor, editor.touched_parameters(mue, cases), baseline.pristine)
    editor.apply(mue, cases)
    put_back_state(mue, point.state, editor.name, "in apply()")   # StateChanged: a hook, a module, ...
    point.restore()   # touched weights from copies, other weights from the source, state in place

What cannot be put back in place is reloaded from the model's source (models.loading.reload_model)
and checked against the unedited model's digests; the error says which happened.
"""

from __future__ import annotations

from typing import Sequence

from editguard.cases import EditCase
from editguard.editors.api import Editor
from editguard.models.loading import ModelUnderEdit, original_parameters, reload_model
from editguard.models.snapshot import PristineModel, RestoreError, WeightSnapshot
from editguard.models.state import ModelState


def put_back_pristine(mue: ModelUnderEdit, pristine: PristineModel) -> str | None:
    """None when every parameter and floating buffer is the unedited model's (bytes and objects);
    else what differed and what was done: the model is put back in place (reloading what no
    snapshot holds) and verified, or RestoreError when that is impossible."""
    changes = pristine.changes(mue.model)
    if not changes:
        return None
    done = pristine.put_back(mue.model, changes, lambda names: original_parameters(mue, names))
    return f"{changes.describe()} (put back: {done})"


# How many changes an error message lists before it says "and N more".
LISTED_CHANGES = 8


def describe_changes(changes: list[str]) -> str:
    shown = "; ".join(changes[:LISTED_CHANGES])
    return shown + (f"; and {len(changes) - LISTED_CHANGES} more" if len(changes) > LISTED_CHANGES else "")


class StateChanged(RestoreError):
    """The editor changed something of the model under edit besides the weights it declared (a
    hook, a module, an attribute, train mode, the tokenizer, the config, editguard's code...); it
    was put back and verified, and the case fails naming each change."""


def state_changed_error(editor_name: str, changes: list[str], when: str) -> StateChanged:
    return StateChanged(f"editor '{editor_name}' {when} changed what an edit must leave alone: "
                        f"{describe_changes(changes)}. All of it was put back and verified, so later tests are not "
                        f"affected; an editor may change only the weights it lists in touched_parameters()")


def put_back_state(mue: ModelUnderEdit, state: ModelState, editor_name: str, when: str) -> None:
    """Raise StateChanged when the non-tensor state differs from `state`, after putting it back
    (verified); RestoreError when it cannot be put back."""
    changes = state.changes(mue)
    if not changes:
        return
    state.put_back(mue)
    left = state.changes(mue)
    if left:
        raise RestoreError(f"editor '{editor_name}' {when} changed {describe_changes(changes)}, and putting it back "
                           f"failed for: {describe_changes(left)}")
    raise state_changed_error(editor_name, changes, when)


def put_back_cases(cases: Sequence[EditCase], saved: list[dict], editor_name: str) -> None:
    """The cases an edit was given are editguard's: rewritten by the editor (through
    object.__setattr__ on the frozen dataclass), they are put back and the edit fails."""
    changed = [c.case_id for c, fields in zip(cases, saved) if vars(c) != fields]
    if changed:
        for c, fields in zip(cases, saved):
            for key, value in fields.items():
                object.__setattr__(c, key, value)
        raise state_changed_error(editor_name, [f"the fields of case(s) {', '.join(map(str, changed))[:200]}"],
                                  "in apply()")


class RestorePoint:
    """The whole model-under-edit state as it is now: the touched weights (copies), every other
    weight (the unedited model's digests) and everything that is not a tensor value (models.state).
    `restore()` puts all of it back and verifies it; what cannot be put back in place is reloaded
    from the model's source. The one snapshot/restore/verify path of single and sequential edits."""

    def __init__(self, mue: ModelUnderEdit, editor: Editor, names: list[str], pristine: PristineModel):
        self.mue, self.editor, self.pristine = mue, editor, pristine
        self.state = ModelState(mue)
        self.snapshot = WeightSnapshot(mue.model, names)

    def restore(self) -> None:
        """Put everything back; raise RestoreError (after the put-back) naming what the editor
        changed that it must not have."""
        name = getattr(self.editor, "name", type(self.editor).__name__)
        state_changes = self.state.changes(self.mue)
        try:
            if state_changes:
                self.state.put_back(self.mue)
                left = self.state.changes(self.mue)
                if left:
                    raise RestoreError(f"could not put back {describe_changes(left)}")
            self.snapshot.restore()
            tensor_changes = put_back_pristine(self.mue, self.pristine)
        except Exception as err:
            self._reload(name, err)
        if state_changes or tensor_changes:
            parts = [describe_changes(state_changes)] if state_changes else []
            parts += [tensor_changes] if tensor_changes else []
            raise StateChanged(f"editor '{name}' {'; '.join(parts)}; the unedited model was put back and verified, so "
                               f"later tests are not affected")

    def _reload(self, name: str, err: Exception):
        """The last way back: the model reloaded from its source (in place in the ModelUnderEdit),
        checked against the unedited model's digests; always raises RestoreError saying so."""
        try:
            reload_model(self.mue)
            left = self.pristine.changes(self.mue.model)
            if left:
                raise RestoreError(f"the reloaded model differs from the unedited one: {left.describe()}")
        except Exception as reload_err:
            raise RestoreError(f"editor '{name}' left the model in a state that could not be put back ({err}), and "
                               f"reloading it failed too ({reload_err}); every later result would be measured on a "
                               f"modified model") from err
        raise RestoreError(f"editor '{name}' left the model in a state that could not be put back in place ({err}); "
                           f"the model was reloaded from its cached weights and verified, so later tests are not "
                           f"affected") from err
