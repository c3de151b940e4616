"""EasyEdit's MEND hyperparameter files (hparams/MEND/<model>.yaml, its MENDHyperParams) as
editguard's MendHparams: each key mapped, fixed to the one value editguard's MEND has, ignored with
why (how EasyEdit runs, saves and validates its training), or refused by name."""

from __future__ import annotations

import re
from typing import Any

from editguard.editors.hparams import EasyEditTranslation, HparamsFileError
from editguard.models.registry import FAMILIES

# EasyEdit's MEND files (hparams/MEND/<model>.yaml, its MENDHyperParams): key -> editguard's MendHparams field.
EASYEDIT_MEND_RENAMED = {"lr": "lr", "edit_lr": "edit_lr_init", "lr_lr": "lr_lr", "seed": "seed", "cedit": "c_edit",
                         "cloc": "c_loc", "rank": "rank", "n_hidden": "n_hidden", "grad_clip": "grad_clip"}
# Keys of MEND's network and training editguard's MEND has one way of: the value it honours; any other
# value is refused, naming the key.
EASYEDIT_MEND_FIXED = {
    "lr_scale": (1.0, "α is learned per matrix without an extra scale"),
    "dropout": (0.0, "g has no dropout"),
    "train_base": (False, "the edited model is never trained, only g and α"),
    "no_grad_layers": (None, "every layer of the model stays frozen anyway"),
    "one_sided": (False, "g reads both u and δ"),
    "hidden_dim": (None, "g's low-rank layers have `rank`, their width is the matrix's"),
    "init": ("id", "g starts as the identity (B = 0)"),
    "norm": (True, "g's inputs are normalised by running mean and deviation"),
    "combine": (True, "u and δ go through one network per matrix shape"),
    "x_only": (False, "g reads both u and δ"),
    "delta_only": (False, "g reads both u and δ"),
    "act": ("relu", "g's layers use ReLU"),
    "mlp_class": ("IDMLP", "g is MEND's IDMLP (identity-initialised residual low-rank layers)"),
    "shared": (True, "matrices of one shape share g, with a scale and shift per matrix"),
    "opt": ("Adam", "g and α are trained with Adam"),
    "half": (False, "--dtype sets the model's precision"),
}
EASYEDIT_MEND_IGNORED = {
    "alg_name": "selects the editor; --editor=mend does here",
    "archive": "EasyEdit's trained network (a torch pickle) is never loaded: editguard trains its own (train-mend)",
    "device": "--device", "model_name": "--model names the model", "model_class": "--model names the model",
    "tokenizer_class": "the model's own tokenizer", "tokenizer_name": "the model's own tokenizer",
    "model_parallel": "--device / --devices",
    "cbase": "weight of the base model's loss, used only with train_base (false)",
    "max_iters": "training steps: editguard train-mend --steps", "max_epochs": "training steps: train-mend --steps",
    "model_save_pt": "train-mend caches the trained network itself", "save": "train-mend caches the network itself",
    "silent": "output", "verbose": "output", "debug": "output", "log_interval": "output",
    "eval_log_interval": "output", "final_eval": "EasyEdit's validation during training",
    "val_interval": "EasyEdit's validation during training", "val_batch_size": "EasyEdit's validation",
    "val_steps": "EasyEdit's validation", "eval_only": "EasyEdit's validation",
    "early_stop_patience": "EasyEdit's early stopping on validation (train-mend runs --steps)",
    "early_stop_key": "EasyEdit's early stopping on validation (train-mend runs --steps)",
    "results_dir": "--editguard-json / --json", "max_length": "generation length of EasyEdit's evaluation",
}


def _mend_inner_params(value: Any, path) -> tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]:
    """inner_params (e.g. model.layers.29.mlp.down_proj.weight) as (layers, modules inside each
    layer, families whose layer template they follow); every layer must have the same modules."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise HparamsFileError(f"hyperparameter file {path}: inner_params {value!r}: expected a list of parameter "
                               f"names such as model.layers.29.mlp.down_proj.weight")
    found: dict[int, list[str]] = {}
    prefixes = set()
    for name in value:
        match = re.fullmatch(r"(.+)\.(\d+)\.(.+)\.weight", name)
        if not match:
            raise HparamsFileError(f"hyperparameter file {path}: inner_params entry {name!r}: expected "
                                   f"<layers>.<N>.<module>.weight")
        prefixes.add(match[1])
        found.setdefault(int(match[2]), []).append(match[3])
    modules = tuple(dict.fromkeys(m for ms in found.values() for m in ms))
    uneven = {layer: ms for layer, ms in found.items() if sorted(ms) != sorted(modules)}
    if uneven:
        raise HparamsFileError(f"hyperparameter file {path}: inner_params: editguard's MEND edits the same modules "
                               f"({', '.join(modules)}) in every layer it edits; layers "
                               f"{', '.join(map(str, sorted(uneven)))} differ")
    template = next(iter(prefixes)) + ".{}" if len(prefixes) == 1 else None
    families = tuple(f.name for f in FAMILIES.values() if f.layer == template)
    # Of those, the ones whose rewritten MLP matrix is among the modules (GPT-2's c_proj, GPT-J's fc_out).
    rewriting = tuple(name for name in families
                      if any(f"{template}.{m}" == FAMILIES[name].rewrite for m in modules))
    families = rewriting or families
    if not families:
        raise HparamsFileError(f"hyperparameter file {path}: inner_params {sorted(prefixes)}.N...: no layer template "
                               f"of a family editguard knows ({', '.join(FAMILIES)})")
    return tuple(sorted(found)), modules, families


def translate_easyedit_mend(data: dict[str, Any], path) -> EasyEditTranslation:
    """EasyEdit's MEND keys as editguard's MendHparams (the module's docstring says how); the
    families are those whose layers `inner_params` names."""
    overrides: dict[str, Any] = {}
    ignored: dict[str, str] = {}
    notes: list[str] = []
    families: tuple[str, ...] = ()
    unknown = []
    for key, value in data.items():
        if key in EASYEDIT_MEND_RENAMED:
            overrides[EASYEDIT_MEND_RENAMED[key]] = value
        elif key == "inner_params":
            layers, modules, families = _mend_inner_params(value, path)
            overrides["layers"], overrides["modules"] = list(layers), list(modules)
        elif key == "batch_size":
            accumulate = data.get("accumulate_bs", 1)
            if isinstance(value, bool) or not isinstance(value, int) or isinstance(accumulate, bool) \
                    or not isinstance(accumulate, int) or value < 1 or accumulate < 1:
                raise HparamsFileError(f"hyperparameter file {path}: batch_size {value!r} and accumulate_bs "
                                       f"{accumulate!r}: expected positive whole numbers")
            overrides["batch_size"] = value * accumulate
            if accumulate != 1:
                notes.append(f"batch_size {value} × accumulate_bs {accumulate}: {value * accumulate} edits per "
                             f"training step (editguard accumulates no gradients)")
        elif key == "accumulate_bs":
            if "batch_size" not in data:
                raise HparamsFileError(f"hyperparameter file {path}: accumulate_bs without batch_size")
        elif key in EASYEDIT_MEND_FIXED:
            honoured, why = EASYEDIT_MEND_FIXED[key]
            if value != honoured or type(value) is not type(honoured) and not (
                    isinstance(honoured, float) and isinstance(value, int) and not isinstance(value, bool)):
                raise HparamsFileError(f"hyperparameter file {path}: {key} {value!r} cannot be honoured: editguard's "
                                       f"MEND has {key} {honoured!r} ({why})")
        elif key in EASYEDIT_MEND_IGNORED:
            ignored[key] = EASYEDIT_MEND_IGNORED[key]
        else:
            unknown.append(key)
    if unknown:
        known = sorted({*EASYEDIT_MEND_RENAMED, "inner_params", "batch_size", "accumulate_bs", *EASYEDIT_MEND_FIXED,
                        *EASYEDIT_MEND_IGNORED})
        raise HparamsFileError(f"hyperparameter file {path}: EasyEdit MEND keys editguard does not know: "
                               f"{sorted(unknown)}; known: {known}")
    return EasyEditTranslation("MEND", overrides, ignored, notes, families)
