"""Edit cases, normal-text sentences and fast editor hyperparameters shared by the tests that edit
the tiny random models. Import them with `from tests.tiny_edits import PARIS`; the models
themselves are fixtures in tests/conftest.py (`tiny`, `tiny_llama`)."""

import torch

from editguard import EditCase
from editguard.models.registry import TINY_MODEL_TYPES

# The tiny random models, one per family (seeded, built in memory, no download). TINY_MODELS, the
# three the editor tests run on; EVERY_TINY_MODEL, one per known model type (llama, mistral,
# qwen2/3, gemma/2/3, phi3, gpt2, gptj, gpt_neox, opt), for the per-family unit tests.
TINY_MODELS = ["tiny-gpt2", "tiny-gptj", "tiny-llama"]
EVERY_TINY_MODEL = [f"tiny-{name}" for name in TINY_MODEL_TYPES]

PARIS = EditCase("t1", "{} is the capital of", "Paris", "Rome", "France")
CASES = [
    PARIS,
    EditCase("t2", "{} was born in", "Mozart", "Berlin", "Salzburg"),
    EditCase("t3", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
]
# The collapse-risk screen's and hard-case mining's cases; case 2 has the same head as case 1.
SCREEN_CASES = [
    EditCase("1", "{} is the capital of", "Paris", "Rome", "France"),
    EditCase("2", "{} is located in", "Paris", "Peru", "France"),  # same head as case 1
    EditCase("3", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditCase("4", "{} was developed by", "Windows", "Apple", "Microsoft"),
    EditCase("5", "In {}, the official language is", "Japan", "Greek", "Japanese"),
]
SENTENCES = [
    "The river flows through the old town and into the sea.",
    "She opened the window and looked at the garden for a long time.",
    "In 1905 the railway reached the village, and trade grew quickly.",
    "Most of the museum's paintings were donated by a local family.",
]
N_TOKENS = 3000  # covariance statistics from 3,000 WikiText tokens: enough for tiny models
FAST_V = {"v_num_grad_steps": 4, "context_template_length_params": [[5, 5]]}
FAST = {
    "rome": FAST_V,
    "c-rome": FAST_V,
    "r-rome": FAST_V,
    "ft": {"steps": 5},
    # λ scaled down for tiny models, whose keys are far smaller than GPT-2 XL's.
    "memit": {**FAST_V, "mom2_n_tokens": N_TOKENS, "mom2_update_weight": 10.0},
    "alphaedit": {**FAST_V, "mom2_n_tokens": N_TOKENS, "l2_weight": 1e-2},
}


def copy_parameters(mue) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in mue.model.named_parameters()}


def changed_parameters(mue, before: dict[str, torch.Tensor]) -> list[str]:
    return sorted(name for name, p in mue.model.named_parameters() if not torch.equal(p.detach(), before[name]))
