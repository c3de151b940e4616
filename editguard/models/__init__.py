from editguard.models.loading import ModelLoadError, ModelUnderEdit, load_model, load_tokenizer
from editguard.models.registry import DEFAULT_MODEL, FAMILIES, MODELS, Family, ModelSpec
from editguard.models.snapshot import RestoreError, WeightSnapshot, parameter_checksums

__all__ = [
    "DEFAULT_MODEL", "FAMILIES", "MODELS", "Family", "ModelSpec", "ModelLoadError", "ModelUnderEdit",
    "RestoreError", "WeightSnapshot", "load_model", "load_tokenizer", "parameter_checksums",
]
