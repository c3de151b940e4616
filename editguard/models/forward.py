"""Forward passes over part of a model: one that stops at a module (the layers above it are not
needed), one that starts at a layer from a given input (the layers below it did not change), the
key/value-cache keyword of the base model's forward, and attention over shared key/value heads."""

from __future__ import annotations

import contextlib
import inspect
import os

import torch

from editguard.models.loading import ModelUnderEdit, token_grid


class _StopForward(Exception):
    """Raised by a hook once the module of interest has run: later layers are not needed."""


@torch.no_grad()
def _forward_stopping_at(mue: ModelUnderEdit, module: torch.nn.Module, after: bool, **forward_kwargs) -> dict:
    """A forward pass of the base model that stops at `module` (before it runs, or with `after`
    right after it), returning its first input (and output) as (rows, tokens, width)."""
    captured = {}

    def stop_before(_module, args):
        captured["input"] = args[0]
        raise _StopForward

    def stop_after(_module, args, output):
        # A decoder block returns a tuple in older transformers: its hidden states come first.
        captured["input"], captured["output"] = args[0], output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = module.register_forward_hook(stop_after) if after else module.register_forward_pre_hook(stop_before)
    try:
        mue.model.base_model(**forward_kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    rows = forward_kwargs["input_ids"].shape[0]
    return {name: token_grid(tensor, rows) for name, tensor in captured.items()}


def inputs_until(mue: ModelUnderEdit, module: torch.nn.Module, **forward_kwargs) -> torch.Tensor:
    """The input of `module` in a forward pass of the base model that stops right there."""
    return _forward_stopping_at(mue, module, False, **forward_kwargs)["input"]


# transformers' SDPA attention reads this switch at each call. Set to "1", it lets torch attend over
# the key/value heads that a group of query heads shares (enable_gqa); otherwise, whenever a padding
# mask is given, it first copies each key/value head once per query head (repeat_kv).
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def grouped_query_attention(mue: ModelUnderEdit):
    """Forward and backward passes inside attend over shared key/value heads without copying
    them, on a CPU: torch's CPU kernel computes the same numbers (tests/test_forward.py) at about
    half the attention's cost on SmolLM2's v* shapes. Elsewhere nothing changes (CUDA's kernels fall
    back to the math path for grouped heads under a mask). The variable is put back after."""
    if mue.device.type != "cpu":
        yield
        return
    previous = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_GQA, None)
        else:
            os.environ[_FORCE_GQA] = previous


def cache_kwargs(mue: ModelUnderEdit, cache) -> dict:
    """Keyword arguments passing a key/value cache to the base model's forward (transformers
    5.x renamed `past_key_values` to `cache` in some forward signatures)."""
    name = "cache" if "cache" in inspect.signature(mue.model.base_model.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": cache is not None}


def input_and_output_of(mue: ModelUnderEdit, module: torch.nn.Module,
                        **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The (first) input and the output of `module` in a forward pass of the base model that
    stops right after it: the layers above and the LM head are not needed."""
    captured = _forward_stopping_at(mue, module, True, **forward_kwargs)
    return captured["input"], captured["output"]


class SkippedLayer(torch.nn.Module):
    """Stands in for a decoder layer below `starting_at_layer`'s layer: that layer's input was
    computed once, so the layers below pass their input through untouched.
    Attributes the model's layer loop reads (Gemma 3's `attention_type`) come from the layer."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "_replaced", layer)  # not a submodule: its weights stay the model's

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_replaced"), name)


@contextlib.contextmanager
def starting_at_layer(mue: ModelUnderEdit, layer: int, layer_input: torch.Tensor):
    """Forward passes of the base model skip layers 0..layer-1 and feed `layer_input` to `layer`."""
    container = mue.module(mue.family.layer.rsplit(".", 1)[0])  # "model.layers.{}" -> "model.layers"
    originals = [container[i] for i in range(layer)]

    def feed(_module, args, kwargs):
        if args:
            return (layer_input, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": layer_input}

    handle = container[layer].register_forward_pre_hook(feed, with_kwargs=True)
    try:
        for i, original in enumerate(originals):
            container[i] = SkippedLayer(original)
        yield
    finally:
        for i, original in enumerate(originals):
            container[i] = original
        handle.remove()
