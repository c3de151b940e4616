"""Tiny, seeded, randomly initialised models of each family, for fast tests.

They share a byte-level tokenizer built in code (256 byte tokens and one end-of-text token),
so nothing is downloaded.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, GPT2Config, GPTJConfig, LlamaConfig, PreTrainedTokenizerFast

TINY_SEED = 1234
_EOT = "<|endoftext|>"
_BOS = "<s>"  # only in the add_bos variant, as Llama-2's
_VOCAB = 320  # 256 bytes + end-of-text, rounded up


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which ByteLevel pre-tokenizers expect."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def byte_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """The tiny models' tokenizer. With `add_bos`, a Llama-2-like variant: a BOS token `<s>` (id 257)
    of its own, which the tokenizer puts before every text (add_special_tokens=True)."""
    byte_chars = _byte_to_char()
    vocab = {byte_chars[b]: b for b in range(256)}
    vocab[_EOT] = 256
    if add_bos:
        vocab[_BOS] = 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.add_special_tokens([_BOS])
        tok.post_processor = processors.TemplateProcessing(single=f"{_BOS} $A", pair=f"{_BOS} $A {_BOS} $B",
                                                           special_tokens=[(_BOS, 257)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=_BOS if add_bos else _EOT, eos_token=_EOT, pad_token=_EOT, unk_token=_EOT
    )
    fast.padding_side = "right"
    return fast


def tiny_config(model_type: str):
    """A seeded tiny config of `model_type` (a config.model_type, editguard.models.registry.TINY_MODEL_TYPES).
    The first three keep the sizes the tests were written against; the others are 2 layers, hidden 32."""
    from transformers import AutoConfig

    common = dict(vocab_size=_VOCAB, bos_token_id=256, eos_token_id=256, pad_token_id=256)
    if model_type == "gpt2":
        return GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=1024, **common)
    if model_type == "gptj":
        return GPTJConfig(n_layer=4, n_embd=64, n_head=4, rotary_dim=16, n_positions=1024, **common)
    if model_type == "llama":
        return LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, **common,
        )
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=1024, **common)
    gated = dict(small, num_key_value_heads=2)
    sizes = {
        "mistral": dict(gated, sliding_window=None),
        "qwen2": gated,
        "qwen3": dict(gated, head_dim=8),
        "gemma": dict(gated, head_dim=8, bos_token_id=257),
        "gemma2": dict(gated, head_dim=8, bos_token_id=257, query_pre_attn_scalar=8, sliding_window=16),
        "gemma3_text": dict(gated, head_dim=8, bos_token_id=257, query_pre_attn_scalar=8, sliding_window=16,
                            layer_types=["sliding_attention", "full_attention"]),
        "phi3": dict(gated, original_max_position_embeddings=1024),
        "gpt_neox": dict(small, rotary_pct=0.25),
        "opt": dict(vocab_size=_VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=32, max_position_embeddings=1024, bos_token_id=256, eos_token_id=256,
                    pad_token_id=256),
    }
    if model_type not in sizes:
        raise ValueError(f"no tiny config for model type '{model_type}' (have: gpt2, gptj, llama, {', '.join(sizes)})")
    return AutoConfig.for_model(model_type, **sizes[model_type])


def tiny_tokenizer(model_type: str) -> PreTrainedTokenizerFast:
    """The byte tokenizer; for the Gemma types the variant that puts a BOS first, as Gemma's does."""
    return byte_tokenizer(add_bos=model_type.startswith("gemma"))


def build_tiny_model(model_type: str) -> torch.nn.Module:
    config = tiny_config(model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config)
    return model
