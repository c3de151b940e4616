"""The `mend` editor: edits with the longest-trained MEND network cached for the model (trained
beforehand by `editguard train-mend`), and says which command to run when there is none."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from editguard.cases import EditCase
from editguard.editors.api import EditorNotReady, EditReport
from editguard.editors.mend.hparams import ARCHITECTURE_FIELDS, MendHparams, edited_matrices, resolve_hparams
from editguard.editors.mend.store import cached_editors, load_trained, mend_cache_dir
from editguard.editors.mend.training import TrainedMend, gradient_pairs
from editguard.models.loading import ModelUnderEdit
from editguard.options import UPDATE_NORM_REL
from editguard.tokens import edit_batch


class MendNotTrained(EditorNotReady):
    """No usable trained network is cached for the model and hyperparameters."""


_LOADED: dict[str, TrainedMend] = {}   # network file -> loaded editor (a guard run edits many cases)


@dataclass
class MEND:
    """MEND with a hypernetwork trained by `editguard train-mend` (cached per model)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: Any = None

    name: ClassVar[str] = "mend"
    batch_edits: ClassVar[bool] = True   # several cases per apply() (--batch-size)

    def __post_init__(self):
        MendHparams.check_overrides(self.overrides)  # fail at construction, not at the first edit

    def _resolve(self, mue: ModelUnderEdit) -> MendHparams:
        return resolve_hparams(mue, self.overrides)

    def hparams(self, mue: ModelUnderEdit) -> dict[str, Any]:
        return asdict(self._resolve(mue))

    def touched_parameters(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        return [m.name for m in edited_matrices(mue, self._resolve(mue))]

    def prepare(self, mue: ModelUnderEdit) -> None:
        """Load the trained network before the first edit; MendNotTrained says how to train one."""
        self.trained(mue)

    def trained(self, mue: ModelUnderEdit) -> TrainedMend:
        hp = self._resolve(mue)
        # The network's shape must match; of the training hyperparameters only those given.
        found = cached_editors(mue, hp, tuple(dict.fromkeys([*ARCHITECTURE_FIELDS, *self.overrides])))
        for entry in found:
            path = entry["path"]
            if path not in _LOADED:
                loaded = load_trained(Path(path), mue)
                if loaded is None:  # failed its checksum (refused with a CacheWarning): the next-best one
                    continue
                _LOADED[path] = loaded
            return _LOADED[path]
        flag = " --hparams FILE" if self.overrides else ""
        raise MendNotTrained(
            f"no trained MEND editor for model {mue.name} (fingerprint {mue.fingerprint}) with these "
            f"hyperparameters in {mend_cache_dir()}; train one with `editguard train-mend --model {mue.name}"
            f"{flag}` (MEND's hypernetwork must be trained before it can edit)")

    def apply(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        if not cases:
            raise ValueError("mend: no cases to apply")
        trained = self.trained(mue)
        network = trained.network
        clock = time.perf_counter()
        batch = edit_batch(mue, cases)
        pairs, nll_before = gradient_pairs(mue, network.matrices, batch)
        with torch.no_grad():
            deltas = network.updates(pairs)
        before = {}
        with torch.no_grad():
            for m in network.matrices:
                weight = mue.parameter(m.name)
                before[m.name] = weight.detach().clone()
                weight.add_(m.in_storage_layout(deltas[m.name]).to(weight.dtype))
            nll_after = float(batch.nll(mue.model(**batch.inputs).logits))
        seconds_update = time.perf_counter() - clock
        # The guard adds the editor-agnostic anatomy (per-matrix ‖ΔW‖/‖W‖ and blast radius on
        # normal text, `touched_matrices`); the per-matrix relative norms are also kept here, by
        # short name, as MEMIT keeps its per-layer ones.
        diagnostics: dict[str, Any] = {
            "layers": list(trained.hparams.layers),
            "modules": list(trained.hparams.modules),
            "n_cases": len(cases),
            "n_tokens": max(len(p[0]) for p in pairs.values()),   # bounds the rank of every ΔW
            "edit_nll_before": nll_before,
            "edit_nll_after": nll_after,
            "edit_lr_mean": float(network.edit_lrs.detach().mean()),
            "trained_steps": trained.steps,
            "trained_key": trained.key,
            "trained_data_hash": trained.data_hash,
        }
        vectors = {}
        worst = 0.0
        for m in network.matrices:
            rel = float(deltas[m.name].norm() / before[m.name].float().norm().clamp_min(1e-12))
            diagnostics[f"update_norm_rel_{m.label}"] = rel
            worst = max(worst, rel)
            vectors[f"delta_w_{m.label}"] = deltas[m.name]
        diagnostics[UPDATE_NORM_REL] = worst
        diagnostics["seconds_update"] = seconds_update
        return EditReport(touched=[m.name for m in network.matrices], diagnostics=diagnostics, vectors=vectors)
