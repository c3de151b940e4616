"""Editor hyperparameters: a typed, frozen dataclass per editor with per-family and per-model
defaults, overrides checked against the fields' types, and override files (.json/.yaml/.yml)."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from editguard.errors import EditorError, bounded
from editguard.files import parse_config_text
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
            raise ValueError(f"{cls.EDITOR} hyperparameters must be a mapping of name: value, got {bounded(overrides)}")
        valid = cls.valid_keys()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"unknown {cls.EDITOR} hyperparameters {bounded(unknown)}; valid: {valid}")
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
                    raise ValueError(f"{cls.EDITOR} hyperparameter '{key}' must be {expected}, got {bounded(value)}")
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
                                     f"0..{n_layers - 1}, got {bounded(value)}")
        return hp

    def with_overrides(self, overrides: dict[str, Any]):
        return replace(self, **self.check_overrides(overrides))


def _coerce(what: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint` (bool, int, float, str, tuple[...], X | None, Any) or ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{what} must be one of {', '.join(map(str, args))}, got {bounded(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(what, value, option)
            except ValueError:
                continue
        raise ValueError(f"{what} must be {_type_name(hint)}, got {bounded(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{what} must be {_type_name(hint)} (a list), got {bounded(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(what, v, args[0]) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{what} must be {_type_name(hint)} ({len(args)} items), got {bounded(value)}")
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
        raise ValueError(f"{what} must be {_type_name(hint)}, got {bounded(value)} ({type(value).__name__})")
    return float(value) if hint is float else value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")


class HparamsFileError(EditorError, ValueError):
    """An hyperparameter file that cannot be read: wrong extension, bad syntax, not a mapping."""


def load_hparams_file(path) -> dict[str, Any]:
    """Editor hyperparameter overrides from a .json, .yaml or .yml file: a mapping of name:
    value (validated later by the editor, which lists its valid keys)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise HparamsFileError(f"hyperparameter file {path}: unsupported extension {suffix or '(none)'!r}; "
                               f"use .json, .yaml or .yml")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise HparamsFileError(f"hyperparameter file {path}: cannot read it: {err}") from None
    try:
        data = parse_config_text(raw, "json" if suffix == ".json" else "yaml")
    except ValueError as err:
        raise HparamsFileError(f"hyperparameter file {path}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise HparamsFileError(f"hyperparameter file {path}: expected a mapping of name: value at the top level, "
                               f"got {type(data).__name__}")
    return data


# EasyEdit's hyperparameter files (hparams/<ALG>/<model>.yaml, read by its *HyperParams
# dataclasses): recognised by their `alg_name` key and translated to editguard's names. The papers'
# ROME/MEMIT yamls (the Butterfly Effect / Fall of ROME code, an EasyEdit fork) add a few keys.
EASYEDIT_EDITORS = {"ROME": ("rome", "c-rome", "r-rome"), "R-ROME": ("r-rome",), "MEMIT": ("memit",),
                    "AlphaEdit": ("alphaedit",), "FT": ("ft", "ft-l", "ft-m"), "MEND": ("mend",)}
# Keys with the same meaning and name in editguard, per algorithm.
_LOCATE_KEYS = ("v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor",
                "context_template_length_params")
EASYEDIT_SAME = {"ROME": _LOCATE_KEYS, "R-ROME": _LOCATE_KEYS, "MEMIT": _LOCATE_KEYS, "AlphaEdit": _LOCATE_KEYS,
                 "FT": ("lr", "weight_decay")}
# Per algorithm: EasyEdit key -> editguard's name (None: no field here, handled below).
EASYEDIT_RENAMED = {
    "ROME": {"mom2_adjustment": "mom2_adjustment"},
    "R-ROME": {"mom2_adjustment": "mom2_adjustment"},
    "MEMIT": {"mom2_update_weight": "mom2_update_weight", "mom2_adjustment": None},
    "AlphaEdit": {"nullspace_threshold": "nullspace_threshold", "L2": "l2_weight", "mom2_adjustment": None,
                  "mom2_update_weight": None, "P_loc": None},
    "FT": {"num_steps": "steps", "objective_optimization": "objective", "norm_constraint": None, "kl_factor": None},
}
# Keys about how EasyEdit runs, not what the edit is: ignored, with why.
EASYEDIT_IGNORED = {
    "alg_name": "selects the editor; --editor does here",
    "model_name": "--model names the model",
    "device": "--device",
    "model_parallel": "--device / --devices",
    "fp16": "--dtype",
    "max_length": "generation length of EasyEdit's evaluation",
    "batch_size": "cases per edit: --batch-size (sequences: --sequential)",
    "stats_dir": "give ROME/MEMIT statistics files with --editguard-stats-dir",
    "layer_selection": "MEMIT's layers are given by `layers`",
    "fact_token": "editguard reads the key at the subject's last token (subject_last)",
    "v_loss_layer": "editguard takes v*'s loss at the model's output (EasyEdit's files name the last layer)",
    "enable_prompt_keys": "keys: --editor=rome (bare prompt) or c-rome / r-rome (prefix-averaged)",
    "enable_random_prefix_keys": "keys: --editor=rome (bare prompt) or c-rome / r-rome (prefix-averaged)",
    "original_implementation": "keys: --editor=rome (bare prompt) or c-rome / r-rome (prefix-averaged)",
    # The papers' own yamls.
    "ppl_sentence_num": "the perplexity corpus is --ppl-corpus (me-ppl-50: 50 sentences, me-ppl-1k, me-ppl)",
    "ppl_batch_size": "batching does not change a perplexity (editguard batches by itself)",
    "save_keys": "editguard records k̄ and kᵘ's divergence and the denominators in every case's record",
    "save_keys_path": "editguard records k̄ and kᵘ's divergence and the denominators in every case's record",
}
# The papers' switches between ROME's variants -> the editguard editor they are: (if_c_rome, if_prefix).
PAPERS_VARIANTS = {(False, False): "rome", (True, True): "c-rome", (True, False): "r-rome"}
# Module-name templates: editguard takes them from the model's family (editguard.models.registry),
# so a file's templates must be one family's.
EASYEDIT_TEMPLATES = {"rewrite_module_tmp": "rewrite", "layer_module_tmp": "layer", "mlp_module_tmp": "mlp",
                      "ln_f_module": "final_norm", "lm_head_module": "lm_head", "attn_module_tmp": None}
# The datasets and precisions of EasyEdit's layer_stats (editguard.editors.covariance reads its files).
EASYEDIT_STATS_DATASETS = ("wikipedia", "wikitext", "wikitext2")
EASYEDIT_STATS_DTYPES = ("float16", "float32", "float64")


@dataclass
class EasyEditTranslation:
    """An EasyEdit file as editguard overrides, with what was left out and why."""

    algorithm: str
    overrides: dict[str, Any]
    ignored: dict[str, str]          # key -> why it does not matter here
    notes: list[str]                 # values editguard honours differently, in words
    families: tuple[str, ...] = ()   # the families whose module names the file's templates are (): any
    variant: str | None = None       # the editor the papers' if_c_rome / if_prefix switches select

    @property
    def editors(self) -> tuple[str, ...]:
        return (self.variant,) if self.variant else EASYEDIT_EDITORS[self.algorithm]

    def warning(self, path) -> str:
        parts = []
        if self.ignored:
            parts.append("ignored " + "; ".join(f"{k} ({why})" for k, why in self.ignored.items()))
        parts.extend(self.notes)
        return f"EasyEdit {self.algorithm} file {path}: " + "; ".join(parts)


def is_easyedit(data: dict[str, Any]) -> bool:
    return "alg_name" in data


def _template_fits(key: str, value: Any, family) -> bool:
    """Whether an EasyEdit template names `family`'s module: FT's templates may end in ".weight"; a
    tied head is named by its embedding (EasyEdit's GPT-2 and Llama 3.2 files)."""
    attr = EASYEDIT_TEMPLATES[key]
    if attr is None or not isinstance(value, str):
        return True
    value = value.removesuffix(".weight")
    if key == "lm_head_module":
        return value in (family.lm_head, family.embedding)
    return value == getattr(family, attr)


def template_families(templates: dict[str, Any], path) -> tuple[str, ...]:
    """The families whose module names all of a file's templates are; HparamsFileError naming the
    key(s) no family has."""
    fitting = tuple(f.name for f in FAMILIES.values() if all(_template_fits(k, v, f) for k, v in templates.items()))
    if fitting:
        return fitting
    lonely = [k for k, v in templates.items() if not any(_template_fits(k, v, f) for f in FAMILIES.values())]
    if lonely:
        shown = ", ".join(f"{k}={templates[k]!r}" for k in lonely)
        raise HparamsFileError(f"hyperparameter file {path}: {shown} names no module of a family editguard knows "
                               f"({', '.join(FAMILIES)}); editguard takes module names from the model's family")
    shown = ", ".join(f"{k}={v!r}" for k, v in templates.items())
    raise HparamsFileError(f"hyperparameter file {path}: the module templates {shown} are not all one family's "
                           f"(each fits some family, together none)")


def _layer(algorithm: str, value: Any, path) -> int:
    if not isinstance(value, list) or len(value) != 1:
        raise HparamsFileError(f"hyperparameter file {path}: layers {value!r}: {algorithm} edits one layer "
                               f"here, expected a list of one layer such as [5]")
    return value[0]


def translate_easyedit(data: dict[str, Any], path) -> EasyEditTranslation:
    """EasyEdit's ROME / R-ROME / MEMIT / AlphaEdit / FT keys (and the papers' extra ones) as
    editguard's hyperparameters; HparamsFileError for an algorithm editguard has no mapping for, a
    value it cannot honour or a key it does not know, naming the key."""
    algorithm = data.get("alg_name")
    if algorithm not in EASYEDIT_EDITORS:
        raise HparamsFileError(f"hyperparameter file {path}: alg_name {algorithm!r}: editguard reads EasyEdit files "
                               f"of {', '.join(EASYEDIT_EDITORS)}")
    if algorithm == "MEND":   # its keys are MEND's own: editguard.editors.mend.easyedit reads them
        raise HparamsFileError(f"hyperparameter file {path}: an EasyEdit MEND file: read it with "
                               f"editguard.editors.mend.easyedit.translate_easyedit_mend")
    overrides: dict[str, Any] = {}
    ignored: dict[str, str] = {}
    notes: list[str] = []
    templates: dict[str, Any] = {}
    unknown = []
    renamed = EASYEDIT_RENAMED[algorithm]
    rome_like = algorithm in ("ROME", "R-ROME")
    for key, value in data.items():
        if key in EASYEDIT_SAME[algorithm]:
            overrides[key] = value
        elif renamed.get(key):
            overrides[renamed[key]] = value
        elif key == "mom2_adjustment" and algorithm in ("MEMIT", "AlphaEdit"):
            if value is not True:
                raise HparamsFileError(f"hyperparameter file {path}: mom2_adjustment {value!r} cannot be honoured: "
                                       f"{algorithm} always weighs its update by the second moment C")
            ignored[key] = f"{algorithm} always uses C"
        elif key == "mom2_update_weight" and algorithm == "AlphaEdit":
            ignored[key] = "AlphaEdit's update is projected on C's null space and weighed by L2 instead"
        elif key == "P_loc":
            ignored[key] = "editguard computes the null-space projection from C (and caches it in memory)"
        elif key == "norm_constraint" and algorithm == "FT":
            if value is False or value is None:
                overrides["norm_constraint"] = None
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                overrides["norm_constraint"] = value
            else:
                raise HparamsFileError(f"hyperparameter file {path}: norm_constraint {value!r}: expected a number "
                                       f"(ε of the L∞ box) or false (unconstrained)")
        elif key == "kl_factor" and algorithm == "FT":
            if value not in (0, 0.0):
                raise HparamsFileError(f"hyperparameter file {path}: kl_factor {value!r} cannot be honoured: "
                                       f"editguard's FT has no KL term (EasyEdit's FT files use 0)")
            ignored[key] = "0: no KL term, as editguard's FT"
        elif key == "layers":
            if rome_like or algorithm == "FT":
                overrides["layer"] = _layer(algorithm, value, path)
            else:
                overrides["layers"] = value
        elif key == "mom2_n_samples":
            # Texts in EasyEdit: the statistics file's sample count, or texts of the local corpus.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HparamsFileError(f"hyperparameter file {path}: mom2_n_samples {value!r}: expected a positive "
                                       f"number of texts (EasyEdit's null, the whole dataset, is not honoured here)")
            overrides["mom2_n_samples"] = value
        elif key == "mom2_dataset":
            if value not in EASYEDIT_STATS_DATASETS:
                raise HparamsFileError(f"hyperparameter file {path}: mom2_dataset {value!r}: EasyEdit's layer_stats "
                                       f"knows {', '.join(EASYEDIT_STATS_DATASETS)}")
            overrides["mom2_dataset"] = value
            if value != "wikitext2":
                notes.append(f"mom2_dataset {value!r}: read from {value}_stats files with --editguard-stats-dir; "
                             f"without it C is computed on the local corpus (mom2_corpus, default wikitext-2-raw), "
                             f"not on {value}")
        elif key == "mom2_dtype":
            if value not in EASYEDIT_STATS_DTYPES:
                raise HparamsFileError(f"hyperparameter file {path}: mom2_dtype {value!r}: expected one of "
                                       f"{', '.join(EASYEDIT_STATS_DTYPES)} (the precision of the statistics file)")
            overrides["mom2_dtype"] = value
        elif key in ("if_c_rome", "if_prefix") and rome_like:
            if not isinstance(value, bool):
                raise HparamsFileError(f"hyperparameter file {path}: {key} {value!r}: expected true or false")
        elif key in EASYEDIT_TEMPLATES:
            templates[key] = value
        elif key in EASYEDIT_IGNORED:
            ignored[key] = EASYEDIT_IGNORED[key]
        else:
            unknown.append(key)
    if unknown:
        known = sorted({*EASYEDIT_SAME[algorithm], *renamed, "layers", *EASYEDIT_TEMPLATES, *EASYEDIT_IGNORED,
                        *(("mom2_n_samples", "mom2_dataset", "mom2_dtype") if algorithm != "FT" else ()),
                        *(("if_c_rome", "if_prefix") if rome_like else ())})
        raise HparamsFileError(f"hyperparameter file {path}: EasyEdit {algorithm} keys editguard does not know: "
                               f"{sorted(unknown)}; known: {known}")
    if data.get("fact_token", "subject_last") != "subject_last":
        raise HparamsFileError(f"hyperparameter file {path}: fact_token {data['fact_token']!r} cannot be honoured: "
                               f"editguard reads the key at the subject's last token (subject_last)")
    if rome_like and data.get("mom2_adjustment") is False:
        stats_keys = [k for k in ("mom2_dataset", "mom2_n_samples", "mom2_dtype", "stats_dir") if k in data]
        if stats_keys:
            notes.append(f"mom2_adjustment false: {', '.join(stats_keys)} unused (ROME then uses no second moment)")
    variant = None
    if rome_like and ("if_c_rome" in data or "if_prefix" in data):
        switches = (bool(data.get("if_c_rome", False)), bool(data.get("if_prefix", False)))
        variant = PAPERS_VARIANTS.get(switches)
        if variant is None:
            raise HparamsFileError(f"hyperparameter file {path}: if_c_rome false with if_prefix true (ROME's "
                                   f"inconsistent keys, tested with a prefix) is no editor editguard has; "
                                   f"--editor=rome is if_c_rome false, if_prefix false")
        notes.append(f"if_c_rome {switches[0]}, if_prefix {switches[1]}: that is --editor={variant}")
    if algorithm == "FT":
        objective = overrides.get("objective", "target_new")
        unconstrained = "norm_constraint" in overrides and overrides["norm_constraint"] is None
        same = {("prompt_last", True): "ft-l", ("target_new", True): "ft-m"}.get((objective, unconstrained), "ft")
        notes.append(f"objective_optimization {objective!r}, norm_constraint "
                     f"{'false' if unconstrained else overrides.get('norm_constraint', 'default')}: "
                     f"what --editor={same} runs")
        if isinstance(templates.get("rewrite_module_tmp"), str) \
                and not templates["rewrite_module_tmp"].endswith(".weight"):
            notes.append(f"rewrite_module_tmp {templates['rewrite_module_tmp']!r} also tunes that module's bias in "
                         f"EasyEdit (a substring match); editguard tunes its weight")
    families: tuple[str, ...] = ()
    if templates:
        families = template_families(templates, path)
        ignored["module templates"] = (f"{', '.join(sorted(templates))} are the {'/'.join(families)} family's; "
                                       f"editguard takes them from the model")
    return EasyEditTranslation(algorithm, overrides, ignored, notes, families, variant)

