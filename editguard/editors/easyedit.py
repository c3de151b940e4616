"""Any EasyEdit editing method as an editguard editor: `--editor=easyedit:ALG --hparams FILE`.

EasyEdit (zjunlp/EasyEdit) is an optional dependency, never vendored: the adapter imports the
user's own installation (`pip install` of EasyEdit, or its checkout on PYTHONPATH, or the checkout
named by the environment variable EDITGUARD_EASYEDIT_PATH: the folder that holds `easyeditor/`),
and only when an `easyedit:` editor is asked for.

ALG is any `alg_name` in EasyEdit's registry (`easyeditor.util.alg_dict.ALG_DICT`: ROME, MEMIT,
R-ROME, AlphaEdit, FT, EMMET, PMET, ...). The --hparams file is EasyEdit's own, read by EasyEdit's
hyperparameter class for that method (the class the apply function's `hparams` argument is
annotated with): its `alg_name` must be ALG. Its `device` is set to the model's device (editguard's
--device decides where the model is); with --editguard-stats-dir its `stats_dir` is that folder.

Each case becomes an EasyEdit request (prompt with the subject filled in, subject, target_new,
ground_truth, rephrase_prompt) and goes to the method's `apply_*_to_model(model, tok, requests,
hparams, copy=False, return_orig_weights=True, keep_original_weight=False)`, as EasyEdit's own
BaseEditor calls it. Before the edit the adapter declares the weights the file names (`layers` ×
`rewrite_module_tmp`, or `inner_params`; every weight for a method whose file names none); after
it, the report names the weights EasyEdit returned the originals of and any other declared weight
whose value changed. The guard's restore point still checks that nothing else moved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.api import EditorNotFound, EditReport
from editguard.editors.hparams import HparamsFileError, load_hparams_file
from editguard.editors.value import _frozen
from editguard.errors import EditorError
from editguard.models.loading import ModelUnderEdit

PATH_ENV = "EDITGUARD_EASYEDIT_PATH"
PREFIX = "easyedit:"
# The keys editguard's own options add to an editor's overrides, and where they go in EasyEdit's file.
OVERRIDE_KEYS = {"hparams_file": None, "mom2_stats_dir": "stats_dir"}
INSTALL_HINT = (f"install EasyEdit (its requirements.txt, then the checkout on PYTHONPATH or `pip install -e` of it), "
                f"or set {PATH_ENV} to an EasyEdit checkout (the folder that holds easyeditor/)")


class EasyEditUnavailable(EditorNotFound):
    """EasyEdit cannot be imported, or it has no method of that name."""


class EasyEditError(EditorError, ValueError):
    """An EasyEdit hparams file or method that the adapter cannot run, or an edit it cannot check."""


def import_easyedit(editor: str = f"{PREFIX}..."):
    """EasyEdit's `easyeditor.util.alg_dict` module (its ALG_DICT), from the checkout named by
    EDITGUARD_EASYEDIT_PATH or else from wherever Python finds it; EasyEditUnavailable saying
    what failed and how to install it."""
    checkout = os.environ.get(PATH_ENV)
    if checkout:
        root = Path(checkout).expanduser().resolve()
        if root.name == "easyeditor" and (root / "__init__.py").is_file():
            root = root.parent
        if not (root / "easyeditor" / "__init__.py").is_file():
            raise EasyEditUnavailable(f"{PATH_ENV}={checkout}: no easyeditor/__init__.py in it; point it at an "
                                      f"EasyEdit checkout (the folder that holds easyeditor/)")
        loaded = getattr(sys.modules.get("easyeditor"), "__file__", None)
        if loaded is not None and Path(loaded).resolve().parent.parent != root:
            raise EasyEditUnavailable(f"{PATH_ENV}={checkout}, but EasyEdit was already imported from "
                                      f"{Path(loaded).parent} in this process; use one EasyEdit")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    where = f" (from {PATH_ENV}={checkout})" if checkout else ""
    try:
        return importlib.import_module("easyeditor.util.alg_dict")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "easyeditor" and err.name in ("easyeditor", "easyeditor.util",
                                                                                   "easyeditor.util.alg_dict"):
            raise EasyEditUnavailable(f"--editor={editor}: EasyEdit is not importable{where} ({err}); "
                                      f"{INSTALL_HINT}") from None
        raise EasyEditUnavailable(f"--editor={editor}: EasyEdit was found{where} but importing it failed: {err}; "
                                  f"install EasyEdit's requirements (its requirements.txt)") from None
    except Exception as err:   # EasyEdit's own import-time code failed (a version conflict, ...)
        raise EasyEditUnavailable(f"--editor={editor}: importing EasyEdit{where} failed: "
                                  f"{type(err).__name__}: {err}") from None


def hparams_class(apply_fn, alg: str):
    """EasyEdit's hyperparameter class for a method: the annotation of its apply function's
    `hparams` argument (ROMEHyperParams for apply_rome_to_model), else the one class with
    `from_hparams` among the names of that function's module."""
    try:
        annotation = inspect.signature(apply_fn).parameters["hparams"].annotation
    except (KeyError, TypeError, ValueError):
        annotation = inspect.Parameter.empty
    if isinstance(annotation, str):
        annotation = getattr(apply_fn, "__globals__", {}).get(annotation, inspect.Parameter.empty)
    if inspect.isclass(annotation) and hasattr(annotation, "from_hparams"):
        return annotation
    module = sys.modules.get(getattr(apply_fn, "__module__", "") or "")
    found = {id(v): v for v in vars(module).values()
             if inspect.isclass(v) and hasattr(v, "from_hparams") and v.__name__ != "HyperParams"} if module else {}
    if len(found) == 1:
        return next(iter(found.values()))
    raise EasyEditError(f"--editor={PREFIX}{alg}: cannot tell which EasyEdit hyperparameter class reads its file (the "
                        f"apply function {getattr(apply_fn, '__qualname__', apply_fn)!r} names none)")


def read_hparams_file(path: str | Path, alg: str) -> dict[str, Any]:
    """The EasyEdit hparams file as a mapping; EasyEditError unless its alg_name is `alg`."""
    try:
        data = load_hparams_file(path)
    except HparamsFileError as err:
        raise EasyEditError(str(err)) from None
    found = data.get("alg_name")
    if found is None:
        raise EasyEditError(f"hyperparameter file {path}: no alg_name; --editor={PREFIX}{alg} reads EasyEdit's own "
                            f"hparams file of {alg} (alg_name: {alg})")
    if str(found) != alg:
        raise EasyEditError(f"hyperparameter file {path}: alg_name {found!r}, but --editor={PREFIX}{alg}; use "
                            f"--editor={PREFIX}{found} or a {alg} file")
    return data


def _json_able(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_able(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_able(v) for v in value]
    return str(value)


class EasyEditEditor:
    """`--editor=easyedit:ALG --hparams FILE`: EasyEdit's method ALG run on editguard's model."""

    def __init__(self, alg: str, overrides: dict[str, Any] | None = None, data_dir: Any = None):
        overrides = dict(overrides or {})
        self.alg = alg
        self.name = f"{PREFIX}{alg}"
        unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
        if unknown:
            raise EasyEditError(f"--editor={self.name} takes EasyEdit's own hparams file (--hparams FILE with "
                                f"alg_name: {alg}); it has no editguard hyperparameters {unknown}")
        if not overrides.get("hparams_file"):
            raise EasyEditError(f"--editor={self.name} needs --hparams FILE: EasyEdit's hparams file of {alg} (e.g. "
                                f"EasyEdit's hparams/{alg}/llama-7b.yaml with the model's layers and module names)")
        self.hparams_file = str(overrides["hparams_file"])
        data = read_hparams_file(self.hparams_file, alg)
        registry = import_easyedit(self.name)
        algorithms = getattr(registry, "ALG_DICT", None)
        if not isinstance(algorithms, dict):
            raise EasyEditUnavailable(f"--editor={self.name}: {registry.__name__} has no ALG_DICT; is this EasyEdit?")
        if alg not in algorithms:
            raise EasyEditUnavailable(f"--editor={self.name}: EasyEdit registers no alg_name {alg!r}; its ALG_DICT "
                                      f"has {', '.join(sorted(algorithms))}")
        self.apply_fn = algorithms[alg]
        cls = hparams_class(self.apply_fn, alg)
        try:
            hp = (cls.from_json(self.hparams_file) if self.hparams_file.lower().endswith(".json")
                  and hasattr(cls, "from_json") else cls.from_hparams(self.hparams_file))
        except Exception as err:   # EasyEdit's own reader: a missing or unknown field is a TypeError, ...
            raise EasyEditError(f"hyperparameter file {self.hparams_file}: EasyEdit's {cls.__name__}.from_hparams "
                                f"refused it: {type(err).__name__}: {err}") from None
        self.original_device = getattr(hp, "device", None)
        for key, attr in OVERRIDE_KEYS.items():
            if attr and key in overrides:
                if not hasattr(hp, attr):
                    raise EasyEditError(f"--editor={self.name}: {cls.__name__} has no {attr!r}, so "
                                        f"--editguard-stats-dir cannot be used with it")
                setattr(hp, attr, overrides[key])
        self.easyedit_hparams = hp
        self.file_keys = sorted(data)
        self.batch_edits = _batchable(alg)

    # --- the Editor protocol ------------------------------------------------------------------

    def hparams(self, mue: ModelUnderEdit) -> dict[str, Any]:
        hp = self.easyedit_hparams
        values = dataclasses.asdict(hp) if dataclasses.is_dataclass(hp) else dict(vars(hp))
        self.touched_parameters(mue, ())   # a template naming no weight of this model fails here, at start-up
        return {**_json_able(values), "device": str(mue.device), "easyedit_device_in_file": _json_able(
            self.original_device), "easyedit_alg": self.alg, "easyedit_hparams_file": self.hparams_file,
            "easyedit_module": getattr(self.apply_fn, "__module__", None)}

    def touched_parameters(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        """The weights the hparams file names: `layers` × `rewrite_module_tmp` (ROME, MEMIT, FT, ...)
        or `inner_params` (MEND); every weight of the model for a method whose file names none."""
        hp = self.easyedit_hparams
        names = dict(mue.model.named_parameters())
        template, layers = getattr(hp, "rewrite_module_tmp", None), getattr(hp, "layers", None)
        if isinstance(template, str) and isinstance(layers, (list, tuple)):
            declared = [template.format(layer) for layer in layers]
            declared = [d if d.endswith((".weight", ".bias")) else f"{d}.weight" for d in declared]
            source = f"rewrite_module_tmp {template!r} at layers {list(layers)}"
        elif isinstance(getattr(hp, "inner_params", None), (list, tuple)):
            declared, source = [str(p) for p in hp.inner_params], "inner_params"
        else:
            return list(names)
        missing = [d for d in declared if d not in names]
        if missing:
            layer_names = [n for n in names if ".0." in n or ".h.0." in n][:6]
            raise EasyEditError(f"hyperparameter file {self.hparams_file}: {source} names {', '.join(missing)}, "
                                f"which {mue.name} does not have (its weights are named like "
                                f"{', '.join(layer_names)}, ...); write the model's module names and layers in "
                                f"the file")
        return list(dict.fromkeys(declared))

    def apply(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        if len(cases) > 1 and not self.batch_edits:
            raise EasyEditError(f"{self.name} edits one case per call (EasyEdit's batch_edit refuses {self.alg}); "
                                f"got {len(cases)}")
        hp = self.easyedit_hparams
        if hasattr(hp, "device"):
            hp.device = str(mue.device)
        declared = self.touched_parameters(mue, cases)
        before = {n: mue.parameter(n).detach().clone() for n in declared}
        requests = [easyedit_request(case) for case in cases]
        output = io.StringIO()
        clock = time.perf_counter()
        # EasyEdit's compute_v sets requires_grad False on every weight: the flags are put back after.
        with _frozen(mue.model), contextlib.redirect_stdout(output):
            result = self.apply_fn(mue.model, mue.tokenizer, requests, hp, copy=False, return_orig_weights=True,
                                   keep_original_weight=False)
        seconds = time.perf_counter() - clock
        if not isinstance(result, tuple) or not result:
            raise EasyEditError(f"{self.name}: EasyEdit's {getattr(self.apply_fn, '__name__', 'apply')} returned "
                                f"{type(result).__name__}, expected (model, original weights)")
        if result[0] is not mue.model:
            raise EasyEditError(f"{self.name}: EasyEdit returned another model object ({type(result[0]).__name__}) "
                                f"instead of editing the given one in place (a method that wraps the model, such as "
                                f"an adapter, is not a weight edit editguard can check)")
        originals = result[1] if len(result) > 1 and isinstance(result[1], dict) else {}
        touched = [n for n in originals if n in before]
        changed = [n for n, w in before.items() if not torch.equal(w, mue.parameter(n).detach())]
        touched += [n for n in changed if n not in touched]
        diagnostics: dict[str, Any] = {"easyedit_alg": self.alg, "seconds_easyedit_apply": seconds,
                                       "easyedit_returned_originals": sorted(originals)}
        unreturned = sorted(set(changed) - set(originals))
        if unreturned:
            diagnostics["easyedit_changed_without_original"] = unreturned
        undeclared = sorted(set(originals) - set(before))
        if undeclared:   # the restore point names them too, if their values moved
            diagnostics["easyedit_returned_undeclared"] = undeclared
        lines = output.getvalue().splitlines()
        if lines:
            diagnostics["easyedit_output_lines"] = len(lines)
        return EditReport(touched=touched, diagnostics=diagnostics,
                          vectors={f"delta:{n}": (mue.parameter(n).detach() - before[n]) for n in touched})


def easyedit_request(case: EditCase) -> dict[str, Any]:
    """An editguard case as EasyEdit's request (as its BaseEditor's _prepare_requests builds one):
    the prompt with the subject filled in; ground_truth '<|endoftext|>' when the case has none."""
    request: dict[str, Any] = {"case_id": case.case_id, "prompt": case.text, "subject": case.subject,
                               "target_new": case.target_new,
                               "ground_truth": case.target_true if case.target_true is not None else "<|endoftext|>",
                               "portability": {}, "locality": {}}
    if case.paraphrases:
        request["rephrase_prompt"] = case.paraphrases[0]
    return request


def _batchable(alg: str) -> bool:
    """Whether EasyEdit's own batch_edit accepts `alg` (its BatchEditor list); False when that
    list cannot be read."""
    try:
        batch_editor = importlib.import_module("easyeditor.editors.batch_editor")
        return bool(batch_editor.BatchEditor.is_batchable_method(alg))
    except Exception:
        return False
