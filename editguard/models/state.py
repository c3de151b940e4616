"""Everything of a model under edit that is not a tensor's values, captured before an edit and put
back after it: what an untrusted editor can change besides weights.

    state = ModelState(mue)          # before editor.apply
    ...                              # the edit
    changed = state.changes(mue)     # ["hook: forward hook added on model.layers.1.mlp", ...]
    state.put_back(mue)              # the same objects, as they were; state.changes(mue) == [] after

Covered: the module tree (which module object sits where, and its class), each module's parameter,
buffer and child slots, every hook dict of every module and torch's global module hooks, each
module's plain attributes (train mode, epsilons, an instance-level `forward`), every parameter's
and buffer's dtype, device, shape, requires_grad and grad, the model's config and generation
config, the tokenizer's settings and vocabulary, the ModelUnderEdit's own fields, torch's global
modes (grad, default dtype, threads, deterministic algorithms, matmul precision) and the code an
edit runs through (the module classes of the model, torch.nn.functional, editguard's own
modules). The values of parameters and buffers are not here: snapshot.PristineModel digests them.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import types
from typing import Any, Callable

import torch

_SLOTS = ("_parameters", "_buffers", "_modules")
_OWN_PACKAGES = ("editguard", "pytest_editguard", "editguard_suites")


def _short(value: Any) -> str:
    """A bounded repr: a message never embeds an unbounded value."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(old: Any, new: Any) -> bool:
    """The same object, or an equal plain value of the same type (a float rebound to itself)."""
    if old is new:
        return True
    if type(old) is not type(new) or not isinstance(old, (bool, int, float, str, bytes, type(None), torch.dtype)):
        return False
    return old == new


def _is_hook_dict(name: str, value: Any) -> bool:
    return "hook" in name and isinstance(value, dict)


def _tensor_meta(tensor: torch.Tensor | None) -> tuple | None:
    if tensor is None:
        return None
    return (tensor.dtype, tensor.device, tuple(tensor.shape), tensor.requires_grad, tensor.grad is None,
            type(tensor))


def _global_hook_dicts() -> dict[str, dict]:
    module_mod = torch.nn.modules.module
    return {name: value for name, value in vars(module_mod).items()
            if name.startswith("_global_") and isinstance(value, dict)}


def _torch_modes() -> dict[str, Any]:
    return {"grad enabled": torch.is_grad_enabled(), "default dtype": torch.get_default_dtype(),
            "threads": torch.get_num_threads(),
            "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
            "float32 matmul precision": torch.get_float32_matmul_precision(),
            "anomaly detection": torch.is_anomaly_enabled()}


_SET_TORCH_MODE: dict[str, Callable[[Any], None]] = {
    "grad enabled": torch.set_grad_enabled, "default dtype": torch.set_default_dtype,
    "threads": torch.set_num_threads, "deterministic algorithms": torch.use_deterministic_algorithms,
    "float32 matmul precision": torch.set_float32_matmul_precision, "anomaly detection": torch.set_anomaly_enabled,
}


def _namespaces(model: torch.nn.Module) -> dict[str, Any]:
    """The namespaces whose functions and classes an edit's probes run through: each class in the
    model's module types' MROs, torch.nn.functional, torch.Tensor, and editguard's modules and classes."""
    spaces: dict[str, Any] = {"torch.nn.functional": torch.nn.functional, "torch.Tensor": torch.Tensor}
    for module in model.modules():
        for cls in type(module).__mro__:
            if cls is not object:
                spaces.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    for name, mod in list(sys.modules.items()):
        if isinstance(mod, types.ModuleType) and name.split(".")[0] in _OWN_PACKAGES:
            spaces.setdefault(name, mod)
            for value in list(vars(mod).values()):
                if isinstance(value, type) and value.__module__ == name:
                    spaces.setdefault(f"{name}.{value.__qualname__}", value)
    return spaces


def _code_of(space: Any) -> dict[str, Any]:
    """The functions, classes, modules and descriptors a namespace binds (its plain data is not code)."""
    return {k: v for k, v in list(vars(space).items())
            if callable(v) or isinstance(v, (type, types.ModuleType, property, staticmethod, classmethod))}


class ModelState:
    """The non-tensor state of a ModelUnderEdit at one moment (see the module docstring)."""

    def __init__(self, mue: Any):
        model, tok = mue.model, mue.tokenizer
        self.model, self.tokenizer = model, tok
        self.modules = dict(model.named_modules())
        self.slots = {path: {slot: dict(getattr(m, slot)) for slot in _SLOTS} for path, m in self.modules.items()}
        self.non_persistent = {path: set(m._non_persistent_buffers_set) for path, m in self.modules.items()}
        self.classes = {path: type(m) for path, m in self.modules.items()}
        self.hooks = {path: {k: dict(v) for k, v in vars(m).items() if _is_hook_dict(k, v)}
                      for path, m in self.modules.items()}
        self.attributes = {path: {k: v for k, v in vars(m).items() if k not in _SLOTS and not _is_hook_dict(k, v)
                                  and k != "_non_persistent_buffers_set"} for path, m in self.modules.items()}
        self.tensors = {f"{path}.{name}": (t, _tensor_meta(t)) for path, m in self.modules.items()
                        for slot in ("_parameters", "_buffers") for name, t in getattr(m, slot).items()}
        self.global_hooks = {name: dict(d) for name, d in _global_hook_dicts().items()}
        self.config = copy.deepcopy(vars(model.config))
        generation = getattr(model, "generation_config", None)
        self.generation_config = copy.deepcopy(vars(generation)) if generation is not None else None
        self.tokenizer_dict = copy.deepcopy({k: v for k, v in vars(tok).items() if k != "_tokenizer"})
        backend = getattr(tok, "_tokenizer", None)
        self.tokenizer_backend = backend
        self.tokenizer_json = backend.to_str() if backend is not None and hasattr(backend, "to_str") else None
        self.tokenizer_per_call = _per_call_settings(backend)
        self.owner_fields = {f.name: getattr(mue, f.name) for f in dataclasses.fields(mue)}
        self.torch_modes = _torch_modes()
        self.spaces = _namespaces(model)
        self.code = {name: _code_of(space) for name, space in self.spaces.items()}

    # -- what changed ---------------------------------------------------------------------------

    def changes(self, mue: Any) -> list[str]:
        """One line per change since the capture, each naming where and what (bounded)."""
        found: list[str] = []
        found += self._owner_changes(mue)
        model = self.model
        for path, module in self.modules.items():
            where = path or "the model"
            if type(module) is not self.classes[path]:
                found.append(f"module {where}: class {self.classes[path].__name__} changed to {type(module).__name__}")
            for slot in _SLOTS:
                saved, now = self.slots[path][slot], getattr(module, slot, None)
                if not isinstance(now, dict):
                    found.append(f"module {where}: its {slot} dict was removed or replaced")
                    continue
                for name in sorted(saved.keys() | now.keys()):
                    old, new = saved.get(name), now.get(name)
                    if old is new:
                        continue
                    kind = {"_parameters": "parameter", "_buffers": "buffer", "_modules": "submodule"}[slot]
                    if name not in now:
                        found.append(f"{kind} {where}.{name} removed")
                    elif name not in saved:
                        found.append(f"{kind} {where}.{name} added ({type(new).__name__})")
                    elif kind == "parameter":
                        found.append(f"replaced the Parameter object {where}.{name} (`module.{name} = "
                                     f"nn.Parameter(...)`) instead of writing into it in place")
                    else:
                        found.append(f"{kind} {where}.{name} replaced by another {type(new).__name__} object")
            if set(module._non_persistent_buffers_set) != self.non_persistent[path]:
                found.append(f"module {where}: the set of non-persistent buffers changed")
            now_hooks = {k: v for k, v in vars(module).items() if _is_hook_dict(k, v)}
            for kind in sorted(self.hooks[path].keys() | now_hooks.keys()):
                old, new = self.hooks[path].get(kind, {}), now_hooks.get(kind, {})
                added = [fn for key, fn in new.items() if key not in old or old[key] is not fn]
                removed = [key for key in old if key not in new]
                if added:
                    names = ", ".join(getattr(fn, "__qualname__", type(fn).__name__) for fn in added[:3])
                    found.append(f"hook: {len(added)} {kind.strip('_')} added on {where} ({_short(names)})")
                if removed:
                    found.append(f"hook: {len(removed)} {kind.strip('_')} removed from {where}")
            now_attrs = {k: v for k, v in vars(module).items() if k not in _SLOTS and not _is_hook_dict(k, v)
                         and k != "_non_persistent_buffers_set"}
            for name in sorted(self.attributes[path].keys() | now_attrs.keys()):
                old, new = self.attributes[path].get(name, _MISSING), now_attrs.get(name, _MISSING)
                if not _same(old, new):
                    what = "train mode" if name == "training" else f"attribute {name}"
                    found.append(f"{what} of {where}: {_describe(old)} -> {_describe(new)}")
        for name, (tensor, meta) in self.tensors.items():
            now = _tensor_meta(tensor)
            if now != meta:
                found.append(f"tensor {name}: {_meta_text(meta)} -> {_meta_text(now)}")
        for name, saved in self.global_hooks.items():
            now = _global_hook_dicts().get(name, {})
            if now.keys() != saved.keys() or any(now[k] is not saved[k] for k in saved):
                found.append(f"hook: torch's global {name.strip('_')} changed ({len(saved)} -> {len(now)} hooks)")
        found += _dict_changes("config", self.config, vars(model.config))
        generation = getattr(model, "generation_config", None)
        if self.generation_config is not None and generation is not None:
            found += _dict_changes("generation config", self.generation_config, vars(generation))
        found += self._tokenizer_changes()
        modes = _torch_modes()
        found += [f"torch mode {k}: {_short(v)} -> {_short(modes[k])}" for k, v in self.torch_modes.items()
                  if modes[k] != v]
        for name, code in self.code.items():
            now = vars(self.spaces[name])
            for key, value in code.items():
                if now.get(key, _MISSING) is not value:
                    found.append(f"code: {name}.{key} replaced or removed")
        return found

    def _owner_changes(self, mue: Any) -> list[str]:
        found = []
        for name, old in self.owner_fields.items():
            if name == "_modules":
                continue
            new = getattr(mue, name, _MISSING)
            if not _same(old, new) and not (isinstance(old, torch.device) and old == new):
                found.append(f"ModelUnderEdit.{name}: {_describe(old)} -> {_describe(new)}")
        cache = getattr(mue, "_modules", None)   # path -> module, filled on first use: it must match the tree
        if not isinstance(cache, dict) or any(self.modules.get(path, _MISSING) is not m for path, m in cache.items()):
            found.append("ModelUnderEdit's module cache no longer matches the model's modules")
        return found

    def _tokenizer_changes(self) -> list[str]:
        tok = self.tokenizer
        now = {k: v for k, v in vars(tok).items() if k != "_tokenizer"}
        found = _dict_changes("tokenizer", self.tokenizer_dict, now)
        backend = getattr(tok, "_tokenizer", None)
        if backend is not self.tokenizer_backend:
            found.append("tokenizer: its backend object was replaced")
        elif self.tokenizer_json is not None and _reset_per_call(backend, self.tokenizer_per_call) \
                and backend.to_str() != self.tokenizer_json:
            found.append("tokenizer: its backend changed (vocabulary, added tokens, normaliser, padding or "
                         "truncation settings)")
        return found

    # -- putting it back ------------------------------------------------------------------------

    def put_back(self, mue: Any) -> list[str]:
        """Put every captured thing back in place (the same objects where they were); returns what
        was put back, one line per kind. Call `changes` afterwards to verify."""
        done: list[str] = []
        before = self.changes(mue)
        if not before:
            return done
        for name, value in self.owner_fields.items():
            if name != "_modules" and getattr(mue, name, _MISSING) is not value:
                object.__setattr__(mue, name, value)
        object.__setattr__(mue, "_modules", {})   # refilled from the restored tree on first use
        for path, module in self.modules.items():
            if type(module) is not self.classes[path]:
                module.__class__ = self.classes[path]
            state = vars(module)
            for slot in _SLOTS:
                current = state.get(slot)
                if isinstance(current, dict):
                    current.clear()
                    current.update(self.slots[path][slot])
                else:
                    state[slot] = dict(self.slots[path][slot])
            state["_non_persistent_buffers_set"] = set(self.non_persistent[path])
            for key in [k for k, v in state.items() if _is_hook_dict(k, v) and k not in self.hooks[path]]:
                del state[key]
            for kind, hooks in self.hooks[path].items():
                current = state.get(kind)
                if isinstance(current, dict):
                    current.clear()
                    current.update(hooks)
                else:
                    state[kind] = type(hooks)(hooks) if isinstance(hooks, dict) else hooks
            saved_attrs = self.attributes[path]
            for key in [k for k in state if k not in _SLOTS and k != "_non_persistent_buffers_set"
                        and not _is_hook_dict(k, state[k]) and k not in saved_attrs]:
                del state[key]
            state.update(saved_attrs)
        with torch.no_grad():
            for name, (tensor, meta) in self.tensors.items():
                if _tensor_meta(tensor) == meta:
                    continue
                dtype, device, shape, requires_grad, grad_none, _ = meta
                if tensor.dtype != dtype or tensor.device != device or tuple(tensor.shape) != shape:
                    # Values are checked (and re-read where wrong) by the weight digests afterwards.
                    data = tensor.data.to(dtype=dtype, device=device)
                    tensor.data = data if tuple(data.shape) == shape else torch.zeros(shape, dtype=dtype, device=device)
                if isinstance(tensor, torch.nn.Parameter) or tensor.is_leaf:
                    tensor.requires_grad_(requires_grad)
                if grad_none:
                    tensor.grad = None
        global_dicts = _global_hook_dicts()
        for name, saved in self.global_hooks.items():
            global_dicts[name].clear()
            global_dicts[name].update(saved)
        model = self.model
        _put_dict_back(vars(model.config), self.config)
        generation = getattr(model, "generation_config", None)
        if self.generation_config is not None and generation is not None:
            _put_dict_back(vars(generation), self.generation_config)
        tok_state = vars(self.tokenizer)
        backend = tok_state.get("_tokenizer")
        _put_dict_back(tok_state, self.tokenizer_dict, keep=("_tokenizer",))
        if self.tokenizer_backend is not None:
            if backend is not self.tokenizer_backend:
                tok_state["_tokenizer"] = self.tokenizer_backend
            if self.tokenizer_json is not None and self.tokenizer_backend.to_str() != self.tokenizer_json:
                tok_state["_tokenizer"] = type(self.tokenizer_backend).from_str(self.tokenizer_json)
                self.tokenizer_backend = tok_state["_tokenizer"]
        for key, value in self.torch_modes.items():
            if _torch_modes()[key] != value:
                _SET_TORCH_MODE[key](value)
        for name, code in self.code.items():
            space = self.spaces[name]
            for key, value in code.items():
                if vars(space).get(key, _MISSING) is not value:
                    setattr(space, key, value)
        kinds = sorted({line.split(" ", 1)[0].rstrip(":") for line in before})
        done.append(f"{len(before)} non-tensor changes put back ({', '.join(kinds)})")
        return done


def _per_call_settings(backend: Any) -> tuple | None:
    """A fast tokenizer's truncation and padding: transformers sets them on the backend at every call
    (and leaves them there), so they are per-call settings, not state a later call inherits."""
    if backend is None or not hasattr(backend, "truncation"):
        return None
    return (copy.deepcopy(backend.truncation), copy.deepcopy(backend.padding))


def _reset_per_call(backend: Any, saved: tuple | None) -> bool:
    """Put the per-call settings back as they were captured (an honest tokenizer call leaves its
    own there); True, so it can lead a condition."""
    if saved is None or _per_call_settings(backend) == saved:
        return True
    truncation, padding = saved
    if truncation is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(**truncation)
    if padding is None:
        backend.no_padding()
    else:
        backend.enable_padding(**{k: v for k, v in padding.items() if k != "pad_to_multiple_of" or v is not None})
    return True


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def _describe(value: Any) -> str:
    if isinstance(value, (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, _Missing)):
        return _short(value)
    if callable(value):
        return f"{type(value).__name__} {_short(getattr(value, '__qualname__', ''))}"
    return f"a {type(value).__name__} object"


def _meta_text(meta: tuple | None) -> str:
    if meta is None:
        return "(none)"
    dtype, device, shape, requires_grad, grad_none, kind = meta
    plain = kind is torch.nn.Parameter or kind is torch.Tensor
    return (f"{str(dtype).removeprefix('torch.')} on {device} {list(shape)}, requires_grad={requires_grad}"
            f"{'' if grad_none else ', has a grad'}{'' if plain else ', ' + kind.__name__}")


def _dict_changes(what: str, saved: dict, now: dict) -> list[str]:
    found = []
    for key in sorted(saved.keys() | now.keys(), key=str):
        old, new = saved.get(key, _MISSING), now.get(key, _MISSING)
        try:
            equal = old is new or bool(old == new)
        except Exception:   # objects whose == raises or is ambiguous (tensors): compare identity only
            equal = False
        if not equal:
            found.append(f"{what} {key}: {_describe(old)} -> {_describe(new)}")
    return found


def _put_dict_back(target: dict, saved: dict, keep: tuple[str, ...] = ()) -> None:
    for key in [k for k in target if k not in saved and k not in keep]:
        del target[key]
    for key, value in saved.items():
        try:
            equal = target.get(key, _MISSING) is value or bool(target.get(key, _MISSING) == value)
        except Exception:
            equal = False
        if not equal:
            target[key] = copy.deepcopy(value)
