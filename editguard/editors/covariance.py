"""Second moment C = E[k kᵀ] of an edited layer's MLP keys over a text corpus.

ROME's `mom2_adjustment` multiplies k̄ by C⁻¹. C is computed once per (model fingerprint,
layer, corpus hash, token count) and cached on disk; a file lock lets parallel workers share
one computation. Or over a number of the corpus's texts (EasyEdit's `mom2_n_samples`, which counts
texts: `second_moment_of_texts`). Or C comes from a user's downloaded ROME/MEMIT/EasyEdit
statistics (`stats_dir`): the .npz files of their layer_stats, found in either folder layout, chosen
by dataset, sample count and precision, read without unpickling and checked (see find_stats_file,
read_stats_file). `plan_statistics` does all of it when an editor is set up, before any edit.
"""

from __future__ import annotations

import hashlib
import random
import warnings
import zipfile
from dataclasses import dataclass
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


def corpus_texts(lines: list[str], n_texts: int, corpus: str) -> list[str]:
    """`n_texts` of the corpus's texts (its non-blank lines, as the rows of EasyEdit's wikitext
    datasets), a seeded sample as EasyEdit's layer_stats samples its dataset; ValueError naming
    mom2_n_samples when the corpus has fewer."""
    if n_texts > len(lines):
        raise StatsFileError(f"mom2_n_samples {n_texts}: EasyEdit counts texts, and the local corpus {corpus} has "
                             f"only {len(lines)}; give the statistics file with --editguard-stats-dir, or ask for "
                             f"at most {len(lines)} texts (mom2_n_samples) or for tokens (mom2_n_tokens, without "
                             f"mom2_n_samples)")
    chosen = sorted(random.Random(1).sample(range(len(lines)), n_texts))
    return [lines[i] for i in chosen]


def second_moment_of_texts(mue: ModelUnderEdit, layer: int, texts: list[str], batch_size: int = 8,
                           progress: bool = True) -> torch.Tensor:
    """E[k kᵀ] over every token of `texts`, each text tokenized alone and cut at the model's context
    (as EasyEdit's layer_stats does), float64 accumulation, cached on disk."""
    limit = int(getattr(mue.model.config, "n_positions", 0) or getattr(mue.model.config, "max_position_embeddings", 0)
                or 2048)

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        chunks = [ids[:limit] for ids in (mue.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
                  if ids]
        chunks.sort(key=len)   # similar lengths together: less padding
        module = mue.module(mue.family.rewrite.format(layer))
        width = key_width(mue, layer)
        total = torch.zeros(width, width, dtype=torch.float64)
        count = 0
        with progress_bar(f"covariance {mue.name} layer {layer}", len(chunks), enabled=progress) as bar:
            for start in range(0, len(chunks), batch_size):
                batch = chunks[start : start + batch_size]
                count += _accumulate(mue, module, batch, total)
                bar.advance(len(batch))
        return {"mom2": (total / count).float()}, {"n_texts": len(texts), "n_tokens": count, "layer": layer,
                                                   "model": mue.name}

    name = f"{mue.fingerprint}-layer{layer}-{corpus_hash(texts)}-{len(texts)}texts.safetensors"
    tensors, _meta = cached_tensors(cache_dir() / "stats" / name, compute)
    return tensors["mom2"]


# In-process copies on the model's device: every edit of a session reuses them.
_IN_MEMORY: dict[tuple, torch.Tensor] = {}


def _in_memory(key: tuple, compute) -> torch.Tensor:
    if key not in _IN_MEMORY:
        _IN_MEMORY[key] = compute()
    return _IN_MEMORY[key]


class StatsFileError(CacheError, ValueError):
    """Second-moment statistics that cannot be used: missing, ambiguous or malformed files, or a
    corpus too small for the texts asked for."""


class StatisticsWarning(UserWarning):
    """Statistics given but unused (--editguard-stats-dir with mom2_adjustment false), or computed
    otherwise than the hyperparameter file says (another dataset)."""


# The arrays of a ROME/MEMIT layer_stats file (their util/runningstats.py CombinedStat of a
# SecondMoment named "mom2", saved with numpy.savez): Σ k kᵀ and the number of keys summed.
STATS_SUM_KEY, STATS_COUNT_KEY = "mom2.mom2", "mom2.count"
# The datasets EasyEdit's layer_stats names its folders after (<dataset>_stats) and the precisions
# it saves in (`mom2_dtype`).
STATS_DATASETS = ("wikipedia", "wikitext", "wikitext2")
STATS_DTYPES = ("float16", "float32", "float64")
# Checks of a file's C: symmetric within this fraction of its largest entry.
SYMMETRY_TOLERANCE = 1e-4
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def stats_model_dirs(mue: ModelUnderEdit) -> list[str]:
    """The folder names a model's statistics may sit under: editguard's model name, the papers'/ROME
    form (config._name_or_path with "/" as "_", e.g. EleutherAI_gpt-j-6B) and EasyEdit's current
    form (the last part of _name_or_path, e.g. gpt-j-6B for ./hugging_cache/gpt-j-6B)."""
    path = str(getattr(mue.model.config, "_name_or_path", "") or "")
    names = [mue.name, path.replace("/", "_"), path.rstrip("/").rsplit("/", 1)[-1]]
    return list(dict.fromkeys(n for n in names if n and n not in (".", "..")))


@dataclass(frozen=True)
class StatsFile:
    """One layer_stats file as its path names it: <dataset>_stats/<module>_<dtype>_<stats>[_t…][_<n>].npz."""
    path: Path
    dataset: str
    dtype: str
    n_samples: int | None   # None: the whole dataset (no size suffix)

    def describe(self) -> str:
        n = "all" if self.n_samples is None else self.n_samples
        return f"{self.path} (dataset {self.dataset}, mom2_n_samples {n}, mom2_dtype {self.dtype})"


def parse_stats_name(path: Path, module: str) -> StatsFile | None:
    """The dataset, precision and sample count a layer_stats file name says, or None when it is no
    second-moment file of `module`."""
    if not (path.name.startswith(module + "_") and path.name.endswith(".npz") and path.parent.name.endswith("_stats")):
        return None
    parts = path.name[len(module) + 1 : -len(".npz")].split("_")
    if len(parts) < 2 or "mom2" not in parts[1].split("-"):
        return None
    rest = [p for p in parts[2:] if not p.startswith("t")]   # _t<batch_tokens> (EasyEdit writes it unformatted)
    if len(rest) > 1 or (rest and not rest[0].isdigit()):
        return None
    return StatsFile(path, path.parent.name.removesuffix("_stats"), parts[0], int(rest[0]) if rest else None)


def find_stats_file(stats_dir, mue: ModelUnderEdit, layer: int, dataset: str | None = None,
                    n_samples: int | None = None, dtype: str | None = None) -> Path:
    """The statistics file of `layer`'s rewritten module in `stats_dir`, laid out as ROME, MEMIT and
    EasyEdit save them: <stats_dir>/<model>/<dataset>_stats/<module>_<precision>_mom2[_<n>].npz, e.g.
    gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz; <model> in either
    form (stats_model_dirs). The one the hyperparameters name (dataset, sample count, precision:
    None is any); StatsFileError listing what is there when none or several fit."""
    root = Path(stats_dir)
    if not root.is_dir():
        raise StatsFileError(f"statistics directory {root} does not exist")
    module = mue.family.rewrite.format(layer)
    dirs = stats_model_dirs(mue)
    found = {}
    for name in dirs:
        for path in (root / name).glob(f"*_stats/{module}_*.npz"):
            parsed = parse_stats_name(path, module)
            if parsed is not None:
                found.setdefault(path.resolve(), parsed)
    there = sorted(found.values(), key=lambda f: str(f.path))
    if not there:
        raise StatsFileError(f"no second-moment statistics for {module} of {mue.name} in {root}: expected a file like "
                             f"{root}/{dirs[0]}/{dataset or 'wikipedia'}_stats/{module}_{dtype or 'float32'}_mom2_"
                             f"{n_samples or 100000}.npz (model folder: {' or '.join(dirs)})")
    wanted = {"dataset": dataset, "n_samples": n_samples, "dtype": dtype}
    fitting = [f for f in there if all(v is None or getattr(f, k) == v for k, v in wanted.items())]
    asked = ", ".join(f"{'mom2_' + k if k != 'dataset' else 'mom2_dataset'} {v}" for k, v in wanted.items()
                      if v is not None) or "any file"
    listing = "; ".join(f.describe() for f in there)
    if not fitting:
        raise StatsFileError(f"no statistics file for {module} of {mue.name} in {root} fits the hyperparameters "
                             f"({asked}); there: {listing}")
    if len(fitting) > 1:
        raise StatsFileError(f"several statistics files for {module} of {mue.name} fit ({asked}): "
                             f"{'; '.join(f.describe() for f in fitting)}; choose one with mom2_dataset, "
                             f"mom2_n_samples and mom2_dtype in the hyperparameters, or keep one")
    return fitting[0].path


def key_width(mue: ModelUnderEdit, layer: int) -> int:
    """The width of the keys k (the rewritten matrix's input) at `layer`."""
    weight = mue.module(mue.family.rewrite.format(layer)).weight
    return weight.shape[0] if mue.family.weight_is_in_by_out else weight.shape[1]


def _check_zip(path: Path) -> None:
    """A .npz is a zip archive: anything else (a Git LFS pointer, an HTML page, a pickle) is refused
    before numpy sees it."""
    try:
        with path.open("rb") as f:
            head = f.read(200)
    except OSError as err:
        raise StatsFileError(f"statistics file {path}: cannot read it: {err}") from None
    if head.startswith(b"version https://git-lfs"):
        raise StatsFileError(f"statistics file {path}: a Git LFS pointer ({len(head)}+ bytes of text), not the "
                             f"statistics: fetch the file itself (git lfs pull) or download it again")
    if not head.startswith(ZIP_MAGIC):
        kind = "text" if head and all(32 <= b < 127 or b in b"\r\n\t" for b in head) else "binary data"
        raise StatsFileError(f"statistics file {path}: not a .npz (zip) archive, it starts with {kind} "
                             f"{head[:40]!r}")


def check_second_moment(c: torch.Tensor, what: str) -> None:
    """StatsFileError unless C (float64) is finite, symmetric within SYMMETRY_TOLERANCE of its
    largest entry and positive definite (its Cholesky factorisation exists)."""
    if not torch.isfinite(c).all():
        raise StatsFileError(f"{what}: the second moment holds NaN or Inf")
    scale = float(c.abs().max())
    if scale == 0:
        raise StatsFileError(f"{what}: the second moment is all zeros")
    asymmetry = float((c - c.T).abs().max())
    if asymmetry > SYMMETRY_TOLERANCE * scale:
        raise StatsFileError(f"{what}: the second moment is not symmetric (max |C - Cᵀ| {asymmetry:.3g}, "
                             f"{asymmetry / scale:.3g} of its largest entry; tolerance {SYMMETRY_TOLERANCE})")
    _factor, info = torch.linalg.cholesky_ex((c + c.T) / 2)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh((c + c.T) / 2)[0])
        raise StatsFileError(f"{what}: the second moment is not positive definite (smallest eigenvalue "
                             f"{smallest:.3g}, largest entry {scale:.3g}); a second moment of real keys is")


def read_stats_file(path, width: int) -> torch.Tensor:
    """C = mom2 / count (float64) from a ROME/MEMIT statistics file, checked: a zip archive, both
    arrays present, C of shape (width, width), a positive count, C finite, symmetric and positive
    definite. Never unpickles."""
    import numpy as np

    path = Path(path)
    _check_zip(path)
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
    c = torch.from_numpy(total.astype(np.float64)) / float(count)
    check_second_moment(c, f"statistics file {path}")
    return c


@dataclass(frozen=True)
class StatsSource:
    """Where an editor's C comes from, from its hyperparameters: a statistics file in `stats_dir`
    (chosen by dataset, n_samples, dtype), else `n_samples` texts of `corpus` (EasyEdit counts
    texts), else `n_tokens` tokens of it."""
    corpus: str = "wikitext-2-raw"
    n_tokens: int = 100_000
    stats_dir: str | None = None
    dataset: str | None = None
    n_samples: int | None = None
    dtype: str | None = None

    @classmethod
    def of(cls, hp) -> "StatsSource":
        return cls(hp.mom2_corpus, hp.mom2_n_tokens, hp.mom2_stats_dir, getattr(hp, "mom2_dataset", None),
                   getattr(hp, "mom2_n_samples", None), getattr(hp, "mom2_dtype", None))


def _second_moment_of(mue: ModelUnderEdit, layer: int, source: StatsSource, data_dir):
    """C's reader (float64 or float32 on the CPU) and its in-memory key."""
    if source.stats_dir:
        path = find_stats_file(source.stats_dir, mue, layer, source.dataset, source.n_samples, source.dtype)
        stat = path.stat()
        key = ("file", str(path), stat.st_mtime_ns, stat.st_size)
        return (lambda: read_stats_file(path, key_width(mue, layer))), key
    if source.n_samples is not None:
        def texts() -> torch.Tensor:
            chosen = corpus_texts(load_text_corpus(source.corpus, data_dir), source.n_samples, source.corpus)
            return second_moment_of_texts(mue, layer, chosen)

        return texts, (source.corpus, source.n_samples, "texts")

    def compute() -> torch.Tensor:
        return second_moment(mue, layer, load_text_corpus(source.corpus, data_dir), n_tokens=source.n_tokens)

    return compute, (source.corpus, source.n_tokens)


def second_moment_from(mue: ModelUnderEdit, layer: int, source: StatsSource, data_dir=None) -> torch.Tensor:
    """C = E[k kᵀ] of the unedited model's keys at `layer` from `source`; kept in memory, float32 on
    the model's device."""
    read, key = _second_moment_of(mue, layer, source, data_dir)
    return _in_memory((mue.fingerprint, layer, *key, str(mue.device), "C"), lambda: read().float().to(mue.device))


def inverse_second_moment_from(mue: ModelUnderEdit, layer: int, source: StatsSource, data_dir=None) -> torch.Tensor:
    """C⁻¹ (inverted in float64) of the very C `second_moment_from` keeps, float32 on the model's
    device; kept in memory. (Read from the same in-memory C, C and C⁻¹ agree within a process even
    when the disk cache changed in between.)"""
    read, key = _second_moment_of(mue, layer, source, data_dir)
    where = f"statistics file {key[1]}" if key[0] == "file" else f"the second moment of corpus {source.corpus}"

    def invert() -> torch.Tensor:
        c = second_moment_from(mue, layer, source, data_dir).double()
        try:
            inverse = torch.linalg.inv(c)
        except torch.linalg.LinAlgError:
            inverse = None
        if inverse is None or not torch.isfinite(inverse).all():
            raise StatsFileError(f"{where}: C = E[kkᵀ] of layer {layer} ({tuple(c.shape)}) is singular, so C⁻¹ "
                                 f"(mom2_adjustment) does not exist; give statistics collected over enough tokens "
                                 f"(the papers: 100,000), or edit without mom2_adjustment")
        return inverse.float()

    return _in_memory((mue.fingerprint, layer, *key, str(mue.device), "C^-1"), invert)


def layer_second_moment(mue: ModelUnderEdit, layer: int, corpus: str, n_tokens: int, data_dir=None,
                        stats_dir=None) -> torch.Tensor:
    """C over `n_tokens` tokens of a named corpus, or from the one statistics file in `stats_dir`."""
    return second_moment_from(mue, layer, StatsSource(corpus, n_tokens, stats_dir), data_dir)


def inverse_layer_second_moment(mue: ModelUnderEdit, layer: int, corpus: str, n_tokens: int,
                                data_dir=None, stats_dir=None) -> torch.Tensor:
    """C⁻¹ of `layer_second_moment`'s C."""
    return inverse_second_moment_from(mue, layer, StatsSource(corpus, n_tokens, stats_dir), data_dir)


def plan_statistics(mue: ModelUnderEdit, hp, layers, data_dir=None, *, used: bool = True, why_unused: str = "",
                    inverse: bool = False) -> str:
    """An editor's statistics, at set-up before any edit: each layer's C found (or computed) and
    checked now, so that a missing, ambiguous or malformed file is refused before the first edit;
    returns the run header's sentence (which file, or how C was computed, or why none is needed).
    A --editguard-stats-dir that goes unused is said (StatisticsWarning), not dropped."""
    source = StatsSource.of(hp)
    if not used:
        if source.stats_dir:
            warnings.warn(f"--editguard-stats-dir {source.stats_dir} is unused: {why_unused}", StatisticsWarning,
                          stacklevel=2)
            return f"none needed ({why_unused}); the statistics directory {source.stats_dir} is unused"
        return f"none needed ({why_unused})"
    parts = []
    for layer in layers:
        if source.stats_dir:
            path = find_stats_file(source.stats_dir, mue, layer, source.dataset, source.n_samples, source.dtype)
            parts.append(f"layer {layer}: {path}")
        (inverse_second_moment_from if inverse else second_moment_from)(mue, layer, source, data_dir)
    if source.stats_dir:
        return "statistics files " + "; ".join(parts)
    size = (f"{source.n_samples} texts" if source.n_samples is not None else f"{source.n_tokens} tokens")
    text = f"computed on {size} of {source.corpus} (layers {', '.join(map(str, layers))})"
    if source.dataset and source.dataset != "wikitext2":
        text += f"; the hyperparameters name {source.dataset}, which editguard does not have locally"
    return text


@torch.no_grad()
def _accumulate(mue: ModelUnderEdit, module: torch.nn.Module, batch: list[list[int]], total: torch.Tensor) -> int:
    enc = mue.pad_batch(batch)
    keys = inputs_until(mue, module, **enc)[enc["attention_mask"].bool()].double().cpu()
    total += keys.T @ keys
    return keys.shape[0]
