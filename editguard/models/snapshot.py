"""Save and restore exactly the parameters an editor touches, and prove the restore."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from editguard.errors import EditorError


class RestoreError(EditorError, RuntimeError):
    """The model could not be put back as it was: later results would be meaningless."""


def floating_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers() if torch.is_floating_point(b)}


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of the tensor's dtype, shape and bytes: a permutation or offsetting changes cannot hide."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
    h = hashlib.sha256(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
    h.update(flat.numpy())
    return h.hexdigest()


def weight_digests(model: torch.nn.Module) -> dict[str, str]:
    """A digest of every parameter and floating buffer, by name. hashlib releases the GIL, so
    tensors are hashed on a few threads (~0.7 s for 540 MB of float32 on one core)."""
    tensors = {**dict(model.named_parameters()), **floating_buffers(model)}
    with torch.no_grad(), ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(tensors, pool.map(tensor_digest, tensors.values())))


@dataclass
class ModelChanges:
    """How a model differs from its pristine state."""

    replaced: list[str] = field(default_factory=list)    # Parameter objects swapped for others
    parameters: list[str] = field(default_factory=list)  # parameter values changed
    buffers: list[str] = field(default_factory=list)     # floating buffer values changed
    structure: list[str] = field(default_factory=list)   # parameters/buffers added or removed

    def __bool__(self) -> bool:
        return bool(self.replaced or self.parameters or self.buffers or self.structure)

    def describe(self) -> str:
        parts = []
        if self.replaced:
            parts.append(f"replaced the Parameter objects {self.replaced[:5]} (`module.weight = nn.Parameter(...)`) "
                         f"instead of writing into them in place")
        if self.parameters:
            parts.append(f"changed parameters {self.parameters[:5]} that it did not list in touched_parameters()")
        if self.buffers:
            parts.append(f"changed buffers {self.buffers[:5]}")
        if self.structure:
            parts.append(f"added or removed parameters/buffers {self.structure[:5]}")
        return "; ".join(parts)


class PristineModel:
    """The unedited model, without a second copy of its weights: a digest of every parameter and
    floating buffer, the Parameter objects themselves, and copies of the (small) floating buffers."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.digests = weight_digests(model)
        self.parameters = dict(model.named_parameters())
        self.buffers = {n: b.detach().clone() for n, b in floating_buffers(model).items()}

    def changes(self, model: torch.nn.Module) -> ModelChanges:
        if model is not self.model:   # reloaded (models.loading.reload_model): its objects are the originals now
            self.model, self.parameters = model, dict(model.named_parameters())
        now_params, now_buffers = dict(model.named_parameters()), floating_buffers(model)
        now = weight_digests(model)
        changes = ModelChanges(structure=sorted(now.keys() ^ self.digests.keys()))
        changes.replaced = [n for n, p in now_params.items() if n in self.parameters and p is not self.parameters[n]]
        changes.parameters = [n for n in now_params if n in self.digests and now[n] != self.digests[n]
                              and n not in changes.replaced]
        changes.buffers = [n for n in now_buffers if n in self.digests and now[n] != self.digests[n]]
        return changes

    def put_back(self, model: torch.nn.Module, changes: ModelChanges,
                 read_original: Callable[[list[str]], dict[str, torch.Tensor]]) -> str:
        """Undo `changes` in place (the same Parameter objects, so no reference goes stale):
        original objects back, buffers from their copies, changed parameters re-read from the
        model's source by `read_original(names)`. Verifies the result; says what it did."""
        done = []
        with torch.no_grad():
            for name in changes.replaced + [n for n in changes.structure if n in self.parameters]:
                module_path, _, attr = name.rpartition(".")
                setattr(model.get_submodule(module_path), attr, self.parameters[name])
            for name in changes.structure:
                if name not in self.digests:   # added by the editor
                    module_path, _, attr = name.rpartition(".")
                    delattr(model.get_submodule(module_path), attr)
            for name in changes.buffers + [n for n in changes.structure if n in self.buffers]:
                module_path, _, attr = name.rpartition(".")
                module, saved = model.get_submodule(module_path), self.buffers[name]
                current = getattr(module, attr, None)
                if current is not None and current.shape == saved.shape and current.dtype == saved.dtype:
                    current.copy_(saved)
                else:
                    persistent = attr not in module._non_persistent_buffers_set
                    module.register_buffer(attr, saved.clone(), persistent=persistent)
            if changes.replaced or changes.structure or changes.buffers:
                done.append("original parameter objects and buffers put back")
            # Values that differ now (a replaced object's may have been written to as well).
            params = dict(model.named_parameters())
            stale = [n for n in params if tensor_digest(params[n]) != self.digests[n]]
            if stale:
                for name, tensor in read_original(stale).items():
                    params[name].copy_(tensor)
                done.append(f"{len(stale)} parameters re-read from the model's source")
        left = self.changes(model)
        if left:
            raise RestoreError(f"the model could not be put back ({left.describe()}); every later result would be "
                               f"measured on a modified model")
        return ", ".join(done)


class WeightSnapshot:
    """Copies of named parameters; `restore()` writes them back and checks bitwise equality."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        params = dict(model.named_parameters())
        self._model_params = params
        self._params: dict[str, torch.nn.Parameter] = {}
        self._saved: dict[str, torch.Tensor] = {}
        self.extend(names)

    def extend(self, names: list[str]) -> None:
        """Also save these parameters (as they are now); already saved ones keep their copy."""
        missing = [n for n in names if n not in self._model_params]
        if missing:
            raise KeyError(f"cannot snapshot unknown parameters {missing}")
        with torch.no_grad():
            for n in names:
                if n not in self._saved:
                    self._params[n] = self._model_params[n]
                    self._saved[n] = self._model_params[n].detach().clone()

    @property
    def names(self) -> list[str]:
        return list(self._saved)

    def changed(self) -> list[str]:
        return [n for n, p in self._params.items() if not torch.equal(p.detach(), self._saved[n])]

    def saved(self, name: str) -> torch.Tensor:
        return self._saved[name]

    def restore(self) -> None:
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(self._saved[name])
        still_different = self.changed()
        if still_different:
            raise RestoreError(f"restoring {still_different} did not give back the saved weights bit for bit")
