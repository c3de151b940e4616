"""Second moment C = E[k kᵀ] of an edited layer's MLP keys over a text corpus.

ROME's `mom2_adjustment` multiplies k̄ by C⁻¹. C is computed once per (model fingerprint,
layer, corpus hash, token count) and cached on disk; a file lock lets parallel workers share
one computation. Or C comes from a user's downloaded ROME/MEMIT statistics (`stats_dir`): the
.npz files of their layer_stats, read without unpickling (see find_stats_file).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import torch

from editguard.cache import cache_dir, cached_tensors
from editguard.data import load_text_corpus
from editguard.errors import CacheError
from editguard.models.forward import inputs_until
from editguard.models.loading import ModelUnderEdit
from editguard.progress import progress_bar


def _token_chunks(mue: ModelUnderEdit, lines: list[str], n_tokens: int, seq_len: int) -> list[list[int]]:
    """Corpus lines, joined and tokenized, cut into sequences until n_tokens are collected."""
    chunks, buffer, total = [], [], 0
    for line in lines:
        buffer.extend(mue.tokenizer(line + "\n", add_special_tokens=False)["input_ids"])
        while len(buffer) >= seq_len and total < n_tokens:
            chunks.append(buffer[:seq_len])
            buffer, total = buffer[seq_len:], total + seq_len
        if total >= n_tokens:
            break
    if total < n_tokens and buffer:
        chunks.append(buffer[: n_tokens - total])
    return chunks


def corpus_hash(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def second_moment(mue: ModelUnderEdit, layer: int, lines: list[str], n_tokens: int = 100_000,
                  seq_len: int = 256, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """E[k kᵀ] over up to `n_tokens` corpus tokens, float64 accumulation, cached on disk."""

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        chunks = _token_chunks(mue, lines, n_tokens, seq_len)
        module = mue.module(mue.family.rewrite.format(layer))
        width = module.weight.shape[0] if mue.family.weight_is_in_by_out else module.weight.shape[1]
        total = torch.zeros(width, width, dtype=torch.float64)
        count = 0
        with progress_bar(f"covariance {mue.name} layer {layer}", len(chunks), enabled=progress) as bar:
            for start in range(0, len(chunks), batch_size):
                batch = chunks[start : start + batch_size]
                count += _accumulate(mue, module, batch, total)
                bar.advance(len(batch))
        return {"mom2": (total / count).float()}, {"n_tokens": count, "layer": layer, "model": mue.name}

    name = f"{mue.fingerprint}-layer{layer}-{corpus_hash(lines)}-{n_tokens}tok.safetensors"
    tensors, _meta = cached_tensors(cache_dir() / "stats" / name, compute)
    return tensors["mom2"]


# In-process copies on the model's device: every edit of a session reuses them.
_IN_MEMORY: dict[tuple, torch.Tensor] = {}


def _in_memory(key: tuple, compute) -> torch.Tensor:
    if key not in _IN_MEMORY:
        _IN_MEMORY[key] = compute()
    return _IN_MEMORY[key]


class StatsFileError(CacheError, ValueError):
    """Downloaded ROME/MEMIT statistics that cannot be used: missing, ambiguous or malformed."""


# The arrays of a ROME/MEMIT layer_stats file (their util/runningstats.py CombinedStat of a
# SecondMoment named "mom2", saved with numpy.savez): Σ k kᵀ and the number of keys summed.
STATS_SUM_KEY, STATS_COUNT_KEY = "mom2.mom2", "mom2.count"


def stats_model_dirs(mue: ModelUnderEdit) -> list[str]:
    """The folder names a model's statistics may sit under: editguard's model name and the model's
    Hugging Face name (ROME's layer_stats uses config._name_or_path), "/" as "_"."""
    names = [mue.name, str(getattr(mue.model.config, "_name_or_path", "") or "")]
    return list(dict.fromkeys(n.replace("/", "_") for n in names if n))


def find_stats_file(stats_dir, mue: ModelUnderEdit, layer: int) -> Path:
    """The one statistics file of `layer`'s rewritten module in `stats_dir`, laid out as ROME and
    MEMIT save them: <stats_dir>/<model>/<dataset>_stats/<module>_<precision>_mom2[_<n>].npz, e.g.
    gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz."""
    root = Path(stats_dir)
    if not root.is_dir():
        raise StatsFileError(f"statistics directory {root} does not exist")
    module = mue.family.rewrite.format(layer)
    found = sorted({p for name in stats_model_dirs(mue) for p in (root / name).glob(f"*_stats/{module}_*mom2*.npz")})
    if not found:
        model = stats_model_dirs(mue)[0]
        raise StatsFileError(f"no second-moment statistics for {module} of {mue.name} in {root}: expected a file like "
                             f"{root}/{model}/wikipedia_stats/{module}_float32_mom2_100000.npz (model folder: "
                             f"{' or '.join(stats_model_dirs(mue))})")
    if len(found) > 1:
        raise StatsFileError(f"several statistics files for {module} of {mue.name}: "
                             f"{', '.join(str(p) for p in found)}; keep one")
    return found[0]


def key_width(mue: ModelUnderEdit, layer: int) -> int:
    """The width of the keys k (the rewritten matrix's input) at `layer`."""
    weight = mue.module(mue.family.rewrite.format(layer)).weight
    return weight.shape[0] if mue.family.weight_is_in_by_out else weight.shape[1]


def read_stats_file(path, width: int) -> torch.Tensor:
    """C = mom2 / count (float64) from a ROME/MEMIT statistics file, checked: both arrays present,
    C of shape (width, width), a positive count, every entry finite. Never unpickles."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in (STATS_SUM_KEY, STATS_COUNT_KEY) if k not in data.files]
            arrays = {} if missing else {k: data[k] for k in (STATS_SUM_KEY, STATS_COUNT_KEY)}
            present = sorted(data.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise StatsFileError(f"statistics file {path}: cannot read it as a .npz of plain arrays: {err}") from None
    if missing:
        raise StatsFileError(f"statistics file {path}: missing {', '.join(missing)} (ROME/MEMIT's layer_stats "
                             f"layout); it has {', '.join(present) or 'nothing'}")
    total, count = arrays[STATS_SUM_KEY], arrays[STATS_COUNT_KEY]
    if total.dtype.kind not in "fiu" or total.shape != (width, width):
        raise StatsFileError(f"statistics file {path}: {STATS_SUM_KEY} must be a ({width}, {width}) numeric matrix "
                             f"for this layer's keys, got {total.dtype} of shape {total.shape}")
    if count.dtype.kind not in "fiu" or count.size != 1 or not np.isfinite(count).all() or float(count) <= 0:
        raise StatsFileError(f"statistics file {path}: {STATS_COUNT_KEY} must be one positive number, got {count!r}")
    if not np.isfinite(total).all():
        raise StatsFileError(f"statistics file {path}: {STATS_SUM_KEY} holds NaN or Inf")
    return torch.from_numpy(total.astype(np.float64)) / float(count)


def _second_moment_of(mue: ModelUnderEdit, layer: int, corpus: str, n_tokens: int, data_dir, stats_dir):
    """C from the statistics file in `stats_dir` if given, else computed on the corpus; and its key."""
    if stats_dir:
        path = find_stats_file(stats_dir, mue, layer)
        stat = path.stat()
        source = ("file", str(path), stat.st_mtime_ns, stat.st_size)
        return (lambda: read_stats_file(path, key_width(mue, layer))), source

    def compute() -> torch.Tensor:
        return second_moment(mue, layer, load_text_corpus(corpus, data_dir), n_tokens=n_tokens)

    return compute, (corpus, n_tokens)


def layer_second_moment(mue: ModelUnderEdit, layer: int, corpus: str, n_tokens: int, data_dir=None,
                        stats_dir=None) -> torch.Tensor:
    """C = E[k kᵀ] of the unedited model's keys at `layer` over a named text corpus (disk-cached
    by `second_moment`), or from ROME/MEMIT's statistics file in `stats_dir`; kept in memory here,
    float32 on the model's device."""
    read, source = _second_moment_of(mue, layer, corpus, n_tokens, data_dir, stats_dir)
    return _in_memory((mue.fingerprint, layer, *source, str(mue.device), "C"), lambda: read().float().to(mue.device))


def inverse_layer_second_moment(mue: ModelUnderEdit, layer: int, corpus: str, n_tokens: int,
                                data_dir=None, stats_dir=None) -> torch.Tensor:
    """C⁻¹ (inverted in float64), float32 on the model's device; kept in memory."""
    read, source = _second_moment_of(mue, layer, corpus, n_tokens, data_dir, stats_dir)
    where = f"statistics file {source[1]}" if source[0] == "file" else f"the second moment of corpus {corpus}"

    def invert() -> torch.Tensor:
        c = read().double()
        try:
            inverse = torch.linalg.inv(c)
        except torch.linalg.LinAlgError:
            inverse = None
        if inverse is None or not torch.isfinite(inverse).all():
            raise StatsFileError(f"{where}: C = E[kkᵀ] of layer {layer} ({tuple(c.shape)}) is singular, so C⁻¹ "
                                 f"(mom2_adjustment) does not exist; give statistics collected over enough tokens "
                                 f"(the papers: 100,000), or edit without mom2_adjustment")
        return inverse.float().to(mue.device)

    return _in_memory((mue.fingerprint, layer, *source, str(mue.device), "C^-1"), invert)


@torch.no_grad()
def _accumulate(mue: ModelUnderEdit, module: torch.nn.Module, batch: list[list[int]], total: torch.Tensor) -> int:
    enc = mue.pad_batch(batch)
    keys = inputs_until(mue, module, **enc)[enc["attention_mask"].bool()].double().cpu()
    total += keys.T @ keys
    return keys.shape[0]
