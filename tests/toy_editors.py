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
