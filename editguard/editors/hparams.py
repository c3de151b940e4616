"""Editor hyperparameters: a typed, frozen dataclass per editor with per-family and per-model
defaults, overrides checked against the fields' types, and override files (.json/.yaml/.yml)."""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from editguard.errors import EditorError
from editguard.models.registry import FAMILIES
from editguard.options import expected_value

LAYER_FIELDS = ("layer", "layers")  # checked against the model's layer count where it is known


def ranged(default: Any, *, minimum: float | None = None, above: float | None = None,
           maximum: float | None = None) -> Any:
    """A hyperparameter field with its valid range, declared next to it: `v_lr: float = ranged(0.5, above=0)`.
    Every float field must be finite, ranged or not."""
    return field(default=default, metadata={"range": {"minimum": minimum, "above": above, "maximum": maximum}})


@dataclass(frozen=True)
class Hparams:
    """Base of an editor's hyperparameters: a frozen dataclass whose every field has a default.

    Subclasses set `EDITOR` (the name used in error messages), `FAMILY_DEFAULTS` (family ->
    field values replacing the class defaults, with the config they come from in a comment) and
    optionally `MODEL_DEFAULTS` (registered model name -> values measured on that model, applied
    on top). `for_family(family, overrides, model)` is the one way to get the values an edit runs with.
    Override keys must be fields; values are checked against the field's type (an int is
    accepted for a float, a list for a tuple) so that a typo in a file fails before any edit.
    """

    EDITOR: ClassVar[str] = "editor"
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    MODEL_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def valid_keys(cls) -> list[str]:
        return sorted(f.name for f in fields(cls))

    @classmethod
    def check_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """`overrides` with values converted to the fields' types; ValueError naming the
        unknown keys (and listing the valid ones) or the mistyped value."""
        if not isinstance(overrides, dict):
            raise ValueError(f"{cls.EDITOR} hyperparameters must be a mapping of name: value, got {overrides!r}")
        valid = cls.valid_keys()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"unknown {cls.EDITOR} hyperparameters {unknown}; valid: {valid}")
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # annotations naming types that cannot be resolved: check keys only
            hints = {}
        checked = {key: _coerce(f"{cls.EDITOR} hyperparameter '{key}'", value, hints.get(key, Any))
                   for key, value in overrides.items()}
        ranges = {f.name: f.metadata.get("range", {}) for f in fields(cls)}
        for key, value in checked.items():
            for item in (value if isinstance(value, tuple) else (value,)):
                kind = type(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else None
                expected = kind and expected_value(item, kind, **ranges[key])
                if expected:
                    raise ValueError(f"{cls.EDITOR} hyperparameter '{key}' must be {expected}, got {value!r}")
        return checked

    @classmethod
    def for_family(cls, family: str, overrides: dict[str, Any] | None = None, model: str | None = None,
                   n_layers: int | None = None):
        """The values an edit runs with; with `n_layers` (the model's), layer fields are checked
        against it, so `layer: 99` fails when the editor is set up, not at the first edit."""
        base = replace(cls(), **{**cls.FAMILY_DEFAULTS.get(family, {}), **cls.MODEL_DEFAULTS.get(model, {})})
        hp = base.with_overrides(overrides or {})
        if n_layers is not None:
            for name in LAYER_FIELDS:
                value = getattr(hp, name, None)
                layers = value if isinstance(value, tuple) else () if value is None else (value,)
                outside = [layer for layer in layers if not 0 <= layer < n_layers]
                if outside:
                    raise ValueError(f"{cls.EDITOR} hyperparameter '{name}' must be within the model's layers "
                                     f"0..{n_layers - 1}, got {value!r}")
        return hp

    def with_overrides(self, overrides: dict[str, Any]):
        return replace(self, **self.check_overrides(overrides))


def _coerce(what: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint` (bool, int, float, str, tuple[...], X | None, Any) or ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(what, value, option)
            except ValueError:
                continue
        raise ValueError(f"{what} must be {_type_name(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{what} must be {_type_name(hint)} (a list), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(what, v, args[0]) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{what} must be {_type_name(hint)} ({len(args)} items), got {value!r}")
        return tuple(_coerce(what, v, a) for v, a in zip(value, args))
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(hint)
    if ok is None:
        return value
    if not ok(value):
        raise ValueError(f"{what} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return float(value) if hint is float else value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")


class HparamsFileError(EditorError, ValueError):
    """An hyperparameter file that cannot be read: wrong extension, bad syntax, not a mapping."""


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML 1.1 reads 5e-4 (no dot) as a string; numbers written so are floats here, as in
        JSON and YAML 1.2."""

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_hparams_file(path) -> dict[str, Any]:
    """Editor hyperparameter overrides from a .json, .yaml or .yml file: a mapping of name:
    value (validated later by the editor, which lists its valid keys)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise HparamsFileError(f"hyperparameter file {path}: unsupported extension {suffix or '(none)'!r}; "
                               f"use .json, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise HparamsFileError(f"hyperparameter file {path}: cannot read it: {err}") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise HparamsFileError(f"hyperparameter file {path}: invalid JSON: {err}") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as err:
            raise HparamsFileError(f"hyperparameter file {path}: invalid YAML: {err}") from None
        if data is None:
            data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise HparamsFileError(f"hyperparameter file {path}: expected a mapping of name: value at the top level, "
                               f"got {type(data).__name__}")
    return data


# EasyEdit's hyperparameter files (hparams/<ALG>/<model>.yaml, read by its *HyperParams
# dataclasses): recognised by their `alg_name` key and translated to editguard's names.
EASYEDIT_EDITORS = {"ROME": ("rome", "c-rome", "r-rome"), "MEMIT": ("memit",), "AlphaEdit": ("alphaedit",)}
# Keys with the same meaning and name in editguard.
EASYEDIT_SAME = ("v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor",
                 "context_template_length_params")
# Per algorithm: EasyEdit key -> editguard's name (None: no field here, handled below).
EASYEDIT_RENAMED = {
    "ROME": {"mom2_adjustment": "mom2_adjustment"},
    "MEMIT": {"mom2_update_weight": "mom2_update_weight", "mom2_adjustment": None},
    "AlphaEdit": {"nullspace_threshold": "nullspace_threshold", "L2": "l2_weight", "mom2_adjustment": None,
                  "mom2_update_weight": None, "P_loc": None},
}
# Keys about how EasyEdit runs, not what the edit is: ignored, with why.
EASYEDIT_IGNORED = {
    "alg_name": "selects the editor; --editor does here",
    "model_name": "--model names the model",
    "device": "--device",
    "model_parallel": "--device / --devices",
    "fp16": "--dtype",
    "max_length": "generation length of EasyEdit's evaluation",
    "batch_size": "editguard edits one case at a time (sequences: --sequential)",
    "stats_dir": "give ROME/MEMIT statistics files with --editguard-stats-dir",
    "layer_selection": "MEMIT's layers are given by `layers`",
    "mom2_dtype": "statistics are float32 here; with --editguard-stats-dir any precision's file is read",
    "fact_token": "editguard reads the key at the subject's last token (subject_last)",
    "v_loss_layer": "editguard takes v*'s loss at the model's output (EasyEdit's files name the last layer)",
    "enable_prompt_keys": "keys: --editor=rome (bare prompt) or c-rome / r-rome (prefix-averaged)",
    "enable_random_prefix_keys": "keys: --editor=rome (bare prompt) or c-rome / r-rome (prefix-averaged)",
    "original_implementation": "keys: --editor=rome (bare prompt) or c-rome / r-rome (prefix-averaged)",
}
# Module-name templates: editguard takes them from the model's family (editguard.models.registry),
# so a file's templates must be one family's.
EASYEDIT_TEMPLATES = {"rewrite_module_tmp": "rewrite", "layer_module_tmp": "layer", "mlp_module_tmp": "mlp",
                      "ln_f_module": "final_norm", "lm_head_module": "lm_head", "attn_module_tmp": None}
# The corpus of EasyEdit's / ROME's statistics; editguard's local corpus stands in for it.
EASYEDIT_STATS_DATASET = "wikipedia"


@dataclass
class EasyEditTranslation:
    """An EasyEdit file as editguard overrides, with what was left out and why."""

    algorithm: str
    overrides: dict[str, Any]
    ignored: dict[str, str]          # key -> why it does not matter here
    notes: list[str]                 # values editguard honours differently, in words

    @property
    def editors(self) -> tuple[str, ...]:
        return EASYEDIT_EDITORS[self.algorithm]

    def warning(self, path) -> str:
        parts = []
        if self.ignored:
            parts.append("ignored " + "; ".join(f"{k} ({why})" for k, why in self.ignored.items()))
        parts.extend(self.notes)
        return f"EasyEdit {self.algorithm} file {path}: " + "; ".join(parts)


def is_easyedit(data: dict[str, Any]) -> bool:
    return "alg_name" in data


def translate_easyedit(data: dict[str, Any], path) -> EasyEditTranslation:
    """EasyEdit's ROME / MEMIT / AlphaEdit keys as editguard's hyperparameters; HparamsFileError for
    an algorithm editguard has no mapping for, a value it cannot honour or a key it does not know."""
    algorithm = data.get("alg_name")
    if algorithm not in EASYEDIT_EDITORS:
        raise HparamsFileError(f"hyperparameter file {path}: alg_name {algorithm!r}: editguard reads EasyEdit files "
                               f"of {', '.join(EASYEDIT_EDITORS)}")
    overrides: dict[str, Any] = {}
    ignored: dict[str, str] = {}
    notes: list[str] = []
    templates: dict[str, str] = {}
    unknown = []
    renamed = EASYEDIT_RENAMED[algorithm]
    for key, value in data.items():
        if key in EASYEDIT_SAME:
            overrides[key] = value
        elif renamed.get(key):
            overrides[renamed[key]] = value
        elif key == "mom2_adjustment" and algorithm != "ROME":
            if value is not True:
                raise HparamsFileError(f"hyperparameter file {path}: mom2_adjustment {value!r} cannot be honoured: "
                                       f"{algorithm} always weighs its update by the second moment C")
            ignored[key] = f"{algorithm} always uses C"
        elif key == "mom2_update_weight" and algorithm == "AlphaEdit":
            ignored[key] = "AlphaEdit's update is projected on C's null space and weighed by L2 instead"
        elif key == "P_loc":
            ignored[key] = "editguard computes the null-space projection from C (and caches it in memory)"
        elif key == "layers":
            if algorithm == "ROME":
                if not isinstance(value, list) or len(value) != 1:
                    raise HparamsFileError(f"hyperparameter file {path}: layers {value!r}: ROME edits one layer, "
                                           f"expected a list of one layer such as [5]")
                overrides["layer"] = value[0]
            else:
                overrides["layers"] = value
        elif key == "mom2_n_samples":
            # ROME's statistics count texts (each up to the context length), editguard's count tokens.
            overrides["mom2_n_tokens"] = value
            notes.append(f"mom2_n_samples {value} counts Wikipedia texts in EasyEdit and is used as mom2_n_tokens "
                         f"(tokens of the local corpus) here")
        elif key == "mom2_dataset":
            if value != EASYEDIT_STATS_DATASET:
                raise HparamsFileError(f"hyperparameter file {path}: mom2_dataset {value!r} cannot be honoured: "
                                       f"editguard computes the second moment on its local corpus (mom2_corpus) "
                                       f"or reads {EASYEDIT_STATS_DATASET}_stats files (--editguard-stats-dir)")
            notes.append(f"mom2_dataset {value!r}: editguard uses its local corpus (mom2_corpus, default "
                         f"wikitext-2-raw) unless --editguard-stats-dir holds ROME/MEMIT's {value}_stats files")
        elif key in EASYEDIT_TEMPLATES:
            templates[key] = value
        elif key in EASYEDIT_IGNORED:
            ignored[key] = EASYEDIT_IGNORED[key]
        else:
            unknown.append(key)
    if unknown:
        known = sorted([*EASYEDIT_SAME, *renamed, "layers", "mom2_n_samples", "mom2_dataset", *EASYEDIT_TEMPLATES,
                        *EASYEDIT_IGNORED])
        raise HparamsFileError(f"hyperparameter file {path}: EasyEdit {algorithm} keys editguard does not know: "
                               f"{sorted(unknown)}; known: {known}")
    if data.get("fact_token", "subject_last") != "subject_last":
        raise HparamsFileError(f"hyperparameter file {path}: fact_token {data['fact_token']!r} cannot be honoured: "
                               f"editguard reads the key at the subject's last token (subject_last)")
    if data.get("mom2_dtype", "float32") not in ("float32", "float64"):
        raise HparamsFileError(f"hyperparameter file {path}: mom2_dtype {data['mom2_dtype']!r} cannot be honoured: "
                               f"editguard keeps the second moment in float32 (accumulated in float64)")
    if templates:
        fitting = [f.name for f in FAMILIES.values()
                   if all(value == getattr(f, EASYEDIT_TEMPLATES[key]) for key, value in templates.items()
                          if EASYEDIT_TEMPLATES[key])]
        if not fitting:
            shown = ", ".join(f"{k}={v!r}" for k, v in templates.items())
            raise HparamsFileError(f"hyperparameter file {path}: module templates {shown} are no family's that "
                                   f"editguard knows ({', '.join(FAMILIES)}); editguard takes module names from the "
                                   f"model's family")
        ignored["module templates"] = (f"{', '.join(sorted(templates))} are the {'/'.join(fitting)} family's; "
                                       f"editguard takes them from the model")
    return EasyEditTranslation(algorithm, overrides, ignored, notes)
