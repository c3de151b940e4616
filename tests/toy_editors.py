"""Third-party editors as a user would write them, for editguard's own tests.

`ScaleRowEditor` is deliberately unsafe: it multiplies one row of the edited layer's MLP output
projection by 100, which the update-norm gate must catch. Select it with
`--editor=tests.toy_editors:ScaleRowEditor`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from editguard.editors.api import EditReport
from editguard.editors.ft import FineTuneLInf
from editguard.editors.hparams import Hparams


@dataclass(frozen=True)
class ScaleRowHparams(Hparams):
    EDITOR: ClassVar[str] = "scale-row"

    factor: float = 100.0
    row: int = 0          # output row of the (out, in) matrix


class ScaleRowEditor:
    name = "scale-row"

    def __init__(self, overrides: dict[str, Any] | None = None):
        self.hp = ScaleRowHparams().with_overrides(overrides or {})

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def hparams(self, model):
        return asdict(self.hp)

    def apply(self, model, cases):
        with torch.no_grad():
            model.rewrite_matrix(model.edit_layer)[self.hp.row] *= self.hp.factor
        return EditReport(touched=self.touched_parameters(model, cases))


class FaultyEditor:
    """Declares the edited layer's matrix and edits it (row 0 × 1.01), then does one thing it must
    not (`sabotage`): the restore has to notice and put the unedited model back."""

    name = "faulty"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        with torch.no_grad():
            model.rewrite_matrix(model.edit_layer)[0] *= 1.01
            self.sabotage(model)
        return EditReport(touched=self.touched_parameters(model, cases))

    def sabotage(self, model):
        raise NotImplementedError


class UndeclaredEditor(FaultyEditor):
    """Scales the final norm, which it did not declare."""

    name = "undeclared"

    def sabotage(self, model):
        model.parameter(f"{model.family.final_norm}.weight").mul_(1.5)


class PermutingEditor(FaultyEditor):
    """Swaps two rows of an undeclared matrix: every sum stays the same."""

    name = "permuting"

    def sabotage(self, model):
        w = model.parameter(model.family.rewrite_weight(0))
        w[[0, 1]] = w[[1, 0]]


class OffsettingEditor(FaultyEditor):
    """+0.5 on one element of the final norm and -0.5 on another, written through `.data` (which
    bumps no version counter of the Parameter): the sum stays the same."""

    name = "offsetting"

    def sabotage(self, model):
        data = model.parameter(f"{model.family.final_norm}.weight").data
        data[0] += 0.5
        data[1] -= 0.5


class BufferEditor(FaultyEditor):
    """Changes a floating buffer (the first one: the rotary inverse frequencies on tiny-llama)."""

    name = "buffer"

    def sabotage(self, model):
        _, buffer = next((n, b) for n, b in model.model.named_buffers() if torch.is_floating_point(b))
        buffer.mul_(2.0)


class ReplacingEditor(FaultyEditor):
    """Puts its edit in a new Parameter object instead of writing into the declared one."""

    name = "replacing"

    def sabotage(self, model):
        module = model.module(model.family.rewrite.format(model.edit_layer))
        module.weight = torch.nn.Parameter(module.weight * 1.01, requires_grad=False)


FAULTY_EDITORS = (UndeclaredEditor, PermutingEditor, OffsettingEditor, BufferEditor, ReplacingEditor)


class PartialWriteEditor:
    """Scales row 0 of the edited matrix by 1.01 per case; on a case whose new target is
    "English" it writes row 1 (×1000) and then raises, as an editor failing mid-write would."""

    name = "partial-write"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        with torch.no_grad():
            w = model.rewrite_matrix(model.edit_layer)
            if any(c.target_new == "English" for c in cases):
                w[1] *= 1000.0
                raise RuntimeError("the editor failed half-way")
            w[0] *= 1.01
        return EditReport(touched=self.touched_parameters(model, cases))


class NoOpEditor:
    """Declares the edited layer's matrix and leaves it as it is: every safety gate holds, and only
    the edit-quality gates (quality mode) can tell that nothing was learned."""

    name = "no-op"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        return EditReport(touched=self.touched_parameters(model, cases))


class ForceTargetEditor(FineTuneLInf):
    """Forces the new target: fine-tuning of the edited matrix with no norm constraint, with no regard
    for the model's other outputs. (A tiny random model's small unembedding caps how likely any token
    can get, about −4.4 nats each on tiny-llama: a target wins where it has no more tokens than the
    true one.)"""

    name = "force-target"

    def __init__(self, overrides: dict[str, Any] | None = None):
        super().__init__({"steps": 30, "lr": 0.05, "norm_constraint": 100.0, **(overrides or {})})


class CollapsesAtStepEditor:
    """Harmless edits (row 0 of the edited matrix × 1.01) until its `collapse_at`-th apply() call,
    which scales the final norm by 30: the model's perplexity explodes (tiny-llama: ~5.6e6), as a
    sequence's collapse would. Edits in batches."""

    name = "collapses-at-step"
    batch_edits = True
    collapse_at = 2

    def __init__(self):
        self.calls = 0

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer), f"{model.family.final_norm}.weight"]

    def reset(self):
        self.calls = 0

    def apply(self, model, cases):
        self.calls += 1
        with torch.no_grad():
            model.rewrite_matrix(model.edit_layer)[0] *= 1.01
            if self.calls == self.collapse_at:
                model.parameter(f"{model.family.final_norm}.weight").mul_(30.0)
        return EditReport(touched=self.touched_parameters(model, cases), diagnostics={"n_cases": len(cases)})
