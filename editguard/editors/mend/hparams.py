"""MEND's hyperparameters and the matrices it edits (the MLP matrices of the model's last layers)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from editguard.editors.hparams import Hparams
from editguard.models.loading import ModelUnderEdit

# The matrices MEND edits, after its configs: the MLP matrices of the last 3 layers (MEND's
# gpt2-xl / gptj configs: mlp.c_fc + mlp.c_proj, mlp.fc_in + mlp.fc_out of layers 45–47 / 25–27;
# EasyEdit's MEND llama-7b.yaml: gate_proj, up_proj, down_proj of layers 29–31).
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    "gpt2": ("mlp.c_fc", "mlp.c_proj"),
    "gptj": ("mlp.fc_in", "mlp.fc_out"),
    "llama": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
}


@dataclass(frozen=True)
class MendHparams(Hparams):
    EDITOR: ClassVar[str] = "MEND"
    # MEND's configs use rank 1920, one hidden layer, Adam lr 1e-6 for g, 1e-4 for α (init 1e-4),
    # c_edit 0.1, c_loc 1, 10 edits per batch and up to 500k steps on a GPU. A CPU budget of a
    # few hundred steps needs a larger lr for g and a smaller network; the defaults below are
    # that compromise (same for every family; the modules differ, see FAMILY_MODULES).
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        family: {"modules": modules} for family, modules in FAMILY_MODULES.items()
    }

    layers: tuple[int, ...] | None = None     # None: the model's last `n_last_layers` layers
    n_last_layers: int = 3
    modules: tuple[str, ...] = ()              # inside each layer; family default (FAMILY_MODULES)
    rank: int = 256                            # bottleneck of g's low-rank layers (MEND: 1920)
    n_hidden: int = 1                          # hidden layers of g (MEND: 1)
    edit_lr_init: float = 1e-4                 # α at initialisation (MEND: 1e-4)
    lr: float = 1e-4                           # Adam lr of g (MEND: 1e-6, for 10⁵ steps)
    lr_lr: float = 1e-4                        # Adam lr of α (MEND: 1e-4)
    c_edit: float = 0.1                        # weight of the edit loss (MEND: 0.1)
    c_loc: float = 1.0                         # weight of the locality KL (MEND: 1.0)
    # Weight of a second KL, only where the neighbourhood prompts predict their (true) answer: the
    # token-averaged KL above gives those few positions little weight, and an editor trained on it
    # alone learns to rewrite the relation for every subject (locality 0.1 on SmolLM2, see docs/concepts/editors.md).
    c_neighbour: float = 1.0
    batch_size: int = 4                        # edits applied together per training step
    grad_clip: float = 100.0                   # max gradient norm of g and α (MEND: 100)
    max_loc_tokens: int = 32                   # locality sentences are cut to this many tokens
    seed: int = 0


# Hyperparameters that shape the network: a cached editor must match them to be used.
ARCHITECTURE_FIELDS = ("layers", "n_last_layers", "modules", "rank", "n_hidden")


def resolve_hparams(mue: ModelUnderEdit, overrides: dict[str, Any] | None) -> MendHparams:
    hp = MendHparams.for_family(mue.family.name, overrides or {}, mue.name, n_layers=mue.n_layers)
    return complete_hparams(mue, hp)


def complete_hparams(mue: ModelUnderEdit, hp: MendHparams) -> MendHparams:
    """`hp` with the model's layers filled in (and checked)."""
    if not hp.modules:
        raise ValueError(f"MEND has no default matrices for family {mue.family.name}; set 'modules'")
    if hp.layers is None:
        n = mue.n_layers
        hp = replace(hp, layers=tuple(range(max(0, n - hp.n_last_layers), n)))
    bad = [layer for layer in hp.layers if not 0 <= layer < mue.n_layers]
    if not hp.layers or bad or list(hp.layers) != sorted(set(hp.layers)):
        raise ValueError(f"MEND layers {list(hp.layers)}: need distinct increasing layers within model "
                         f"{mue.name}'s 0..{mue.n_layers - 1}")
    return hp


@dataclass(frozen=True)
class EditedMatrix:
    name: str            # parameter name, e.g. model.layers.29.mlp.down_proj.weight
    label: str           # short name for diagnostics, e.g. layer29.down_proj
    d_in: int
    d_out: int
    in_by_out: bool      # GPT-2's Conv1D stores (in, out)

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def shape_key(self) -> str:
        return f"{self.d_in}x{self.d_out}"

    def in_storage_layout(self, delta_w: torch.Tensor) -> torch.Tensor:
        """An (out × in) update laid out as the parameter is stored."""
        return delta_w.T if self.in_by_out else delta_w


def edited_matrices(mue: ModelUnderEdit, hp: MendHparams) -> list[EditedMatrix]:
    out = []
    for layer in hp.layers:
        for module in hp.modules:
            path = f"{mue.family.layer.format(layer)}.{module}"
            mod = mue.module(path)
            weight = mod.weight
            in_by_out = type(mod).__name__ == "Conv1D"
            d_in, d_out = (weight.shape[0], weight.shape[1]) if in_by_out else (weight.shape[1], weight.shape[0])
            label = f"layer{layer}.{module.rpartition('.')[2]}"
            out.append(EditedMatrix(f"{path}.weight", label, int(d_in), int(d_out), in_by_out))
    return out
