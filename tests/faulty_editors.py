"""Editors that leave something other than a weight behind: one per kind of change an untrusted
editor can make to the model under edit besides its declared weights. Each makes an honest edit
(row 0 of the edited matrix × 1.01, declared) and then one change it must not (`sabotage`).

Every one of them, left undetected, made the NEXT case's numbers wrong or crashed the restore.
"""

from __future__ import annotations

import torch

import editguard.guard
from editguard.editors.api import EditReport
from tests.toy_editors import FaultyEditor


def _mlp(model):
    return model.module(model.family.mlp.format(model.edit_layer))


def _halve_output(_module, _args, output):
    return output * 0.5


class ForwardHookEditor(FaultyEditor):
    """Leaves a forward hook on the edited layer's MLP that halves its output."""

    name = "forward-hook"

    def sabotage(self, model):
        _mlp(model).register_forward_hook(_halve_output)


class PreHookEditor(FaultyEditor):
    """Leaves a forward pre-hook on the final norm that scales its input."""

    name = "pre-hook"

    def sabotage(self, model):
        model.module(model.family.final_norm).register_forward_pre_hook(lambda _m, args: (args[0] * 3.0,))


class GlobalHookEditor(FaultyEditor):
    """Leaves one of torch's global module forward hooks (it runs on every module of every model)."""

    name = "global-hook"

    def sabotage(self, model):
        torch.nn.modules.module.register_module_forward_hook(lambda _m, _a, output: output)


class PatchedForwardEditor(FaultyEditor):
    """Monkeypatches the MLP's forward on the instance."""

    name = "patched-forward"

    def sabotage(self, model):
        mlp = _mlp(model)
        original = mlp.forward
        mlp.forward = lambda *args, **kwargs: original(*args, **kwargs) * 0.5


class PatchedClassEditor(FaultyEditor):
    """Monkeypatches the forward of the MLP's class: every layer's MLP, in every model of that class."""

    name = "patched-class"

    def sabotage(self, model):
        cls = type(_mlp(model))
        original = cls.forward
        cls.forward = lambda self, *args, **kwargs: original(self, *args, **kwargs) * 0.5


class NormEpsilonEditor(FaultyEditor):
    """Changes a plain attribute: the final norm's epsilon."""

    name = "norm-epsilon"

    def sabotage(self, model):
        norm = model.module(model.family.final_norm)
        attr = "variance_epsilon" if hasattr(norm, "variance_epsilon") else "eps"
        setattr(norm, attr, 0.5)


class TrainModeEditor(FaultyEditor):
    """Leaves the model in train mode (dropout on, where a model has any)."""

    name = "train-mode"

    def sabotage(self, model):
        model.model.train()


class PaddingSideEditor(FaultyEditor):
    """Sets the tokenizer's padding side to left: every index editguard computes assumes right."""

    name = "padding-side"

    def sabotage(self, model):
        model.tokenizer.padding_side = "left"


class AddedTokenEditor(FaultyEditor):
    """Adds a token to the tokenizer's vocabulary."""

    name = "added-token"

    def sabotage(self, model):
        model.tokenizer.add_tokens(["<editguard-test-token>"])


class EditLayerEditor(FaultyEditor):
    """Rebinds ModelUnderEdit.edit_layer behind the frozen dataclass's back: the next ROME would edit
    another layer."""

    name = "edit-layer"

    def sabotage(self, model):
        object.__setattr__(model, "edit_layer", (model.edit_layer + 1) % model.n_layers)


class DtypeEditor(FaultyEditor):
    """Turns its own (declared) matrix into float64 and an undeclared one into bfloat16."""

    name = "dtype"

    def sabotage(self, model):
        declared = model.parameter(model.family.rewrite_weight(model.edit_layer))
        declared.data = declared.data.double()
        other = model.parameter(model.family.rewrite_weight((model.edit_layer + 1) % model.n_layers))
        other.data = other.data.to(torch.bfloat16)


class ModuleReplacingEditor(FaultyEditor):
    """Replaces the edited layer's MLP output projection with a new module (a copy × 1.01)."""

    name = "module-replacing"

    def sabotage(self, model):
        path = model.family.rewrite.format(model.edit_layer)
        parent_path, _, child = path.rpartition(".")
        old = model.module(path)
        new = torch.nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(old.weight * 1.01)
        setattr(model.module(parent_path), child, new)


class ConfigEditor(FaultyEditor):
    """Changes the model's config."""

    name = "config"

    def sabotage(self, model):
        model.model.config.rms_norm_eps = 0.25
        model.model.config.editguard_marker = True


class RequiresGradEditor(FaultyEditor):
    """Leaves requires_grad on, and a gradient, on an undeclared parameter."""

    name = "requires-grad"

    def sabotage(self, model):
        p = model.parameter(f"{model.family.final_norm}.weight")
        p.requires_grad_(True)
        p.grad = torch.ones_like(p)


class GradModeEditor(FaultyEditor):
    """Turns autograd off for the whole process (the next ROME's v* optimisation needs it)."""

    name = "grad-mode"

    def apply(self, model, cases):
        report = super().apply(model, cases)
        torch.set_grad_enabled(False)   # outside the no_grad block, which would undo it on exit
        return report

    def sabotage(self, model):
        pass


class PatchedGuardEditor(FaultyEditor):
    """Replaces the perplexity function editguard's guard calls with one that says all is well."""

    name = "patched-guard"

    def sabotage(self, model):
        real = editguard.guard.perplexity

        def flattering(*args, **kwargs):
            result = real(*args, **kwargs)
            return type(result)(1.0, 1.0, tuple(1.0 for _ in result.per_sentence), result.n_tokens, result.bos)

        editguard.guard.perplexity = flattering


class CaseRewritingEditor(FaultyEditor):
    """Rewrites the case it was given (a frozen dataclass) behind its back."""

    name = "case-rewriting"

    def apply(self, model, cases):
        report = super().apply(model, cases)
        object.__setattr__(cases[0], "target_new", "something else")
        return report

    def sabotage(self, model):
        pass


class EmbeddingEditor:
    """An honest editor that edits one row of the input embedding (and declares it)."""

    name = "embedding"

    def touched_parameters(self, model, cases):
        return [name for name, _ in model.model.named_parameters() if "embed" in name][:1]

    def apply(self, model, cases):
        with torch.no_grad():
            model.parameter(self.touched_parameters(model, cases)[0])[5] *= 1.01
        return EditReport(touched=self.touched_parameters(model, cases))


class EverythingEditor:
    """An honest editor that declares every parameter and scales row 0 of the edited matrix."""

    name = "everything"

    def touched_parameters(self, model, cases):
        return [name for name, _ in model.model.named_parameters()]

    def apply(self, model, cases):
        with torch.no_grad():
            model.rewrite_matrix(model.edit_layer)[0] *= 1.01
        return EditReport(touched=self.touched_parameters(model, cases))


STATE_FAULTY_EDITORS = (
    ForwardHookEditor, PreHookEditor, GlobalHookEditor, PatchedForwardEditor, PatchedClassEditor, NormEpsilonEditor,
    TrainModeEditor, PaddingSideEditor, AddedTokenEditor, EditLayerEditor, DtypeEditor, ModuleReplacingEditor,
    ConfigEditor, RequiresGradEditor, GradModeEditor, PatchedGuardEditor, CaseRewritingEditor,
)
