"""MEND (Mitchell et al., "Fast Model Editing at Scale", ICLR 2022): a trained hypernetwork
turns the fine-tuning gradient of an edit into a weight update.

For a linear map W (out × in) with input u and output y = W u at each token i, the gradient of a
loss L is a sum of rank-1 terms, ∇_W L = Σ_i δ_i u_iᵀ with δ_i = ∂L/∂y_i. MEND's editor network
g (one per weight shape, shared by every edited matrix of that shape, told apart by a learned
per-matrix scale and shift) maps each token's pair (u_i, δ_i) to (ũ_i, δ̃_i); the update is

    ΔW = −α · Σ_i δ̃_i ũ_iᵀ          (rank ≤ number of tokens with δ_i ≠ 0)

with a learned step α per matrix. g reads [u; δ] normalised by running per-feature mean and
standard deviation (statistics collected while training) and is a stack of residual low-rank
layers h ← h + act(s_m ⊙ B A h + b_m) with B = 0 at initialisation: an untrained g is the
identity, so its update is the plain gradient step −α ∇_W L (tested).

Training (`train_mend`, the base model frozen): per step a batch of edits from CounterFact's
train split; the edit loss's gradient at the unedited weights gives (u, δ); the update is applied
functionally (differentiable in g and α); the loss is c_edit · NLL(target_new | prompt and its
paraphrase, edited) + c_loc · KL(unedited ‖ edited) on locality text (the cases' neighbourhood
prompts and ME-PPL sentences outside ME-PPL_50 and ME-PPL_1k) + c_neighbour · the same KL only
where the neighbourhood prompts predict their answer. Only g and α learn.

The trained editor is cached on disk (`$EDITGUARD_CACHE/mend/`) keyed by the model's fingerprint,
the training data, the hyperparameters, the number of steps and MEND_VERSION. `editguard
train-mend --model M` trains one; the `mend` editor uses the longest-trained editor cached for
the model whose network shape (and any hyperparameter given with --hparams) matches, and says
which command to run when there is none.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from editguard.cases import EditCase
from editguard.editors.api import EditReport
from editguard.editors.hparams import Hparams
from editguard.models.loading import ModelUnderEdit, cache_dir

# Bump when training or the network changes what a cached editor means: old ones are ignored.
MEND_VERSION = 2   # 2: the edit gradient sums over the batch's edits (1 averaged them)


# The matrices MEND edits, after its configs: the MLP matrices of the last 3 layers (MEND's
# gpt2-xl / gptj configs: mlp.c_fc + mlp.c_proj, mlp.fc_in + mlp.fc_out of layers 45–47 / 25–27;
# EasyEdit's MEND llama-7b.yaml: gate_proj, up_proj, down_proj of layers 29–31).
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    "gpt2": ("mlp.c_fc", "mlp.c_proj"),
    "gptj": ("mlp.fc_in", "mlp.fc_out"),
    "llama": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
}


@dataclass(frozen=True)
class MendHparams(Hparams):
    EDITOR: ClassVar[str] = "MEND"
    # MEND's configs use rank 1920, one hidden layer, Adam lr 1e-6 for g, 1e-4 for α (init 1e-4),
    # c_edit 0.1, c_loc 1, 10 edits per batch and up to 500k steps on a GPU. A CPU budget of a
    # few hundred steps needs a larger lr for g and a smaller network; the defaults below are
    # that compromise (same for every family; the modules differ, see FAMILY_MODULES).
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        family: {"modules": modules} for family, modules in FAMILY_MODULES.items()
    }

    layers: tuple[int, ...] | None = None     # None: the model's last `n_last_layers` layers
    n_last_layers: int = 3
    modules: tuple[str, ...] = ()              # inside each layer; family default (FAMILY_MODULES)
    rank: int = 256                            # bottleneck of g's low-rank layers (MEND: 1920)
    n_hidden: int = 1                          # hidden layers of g (MEND: 1)
    edit_lr_init: float = 1e-4                 # α at initialisation (MEND: 1e-4)
    lr: float = 1e-4                           # Adam lr of g (MEND: 1e-6, for 10⁵ steps)
    lr_lr: float = 1e-4                        # Adam lr of α (MEND: 1e-4)
    c_edit: float = 0.1                        # weight of the edit loss (MEND: 0.1)
    c_loc: float = 1.0                         # weight of the locality KL (MEND: 1.0)
    # Weight of a second KL, only where the neighbourhood prompts predict their (true) answer: the
    # token-averaged KL above gives those few positions little weight, and an editor trained on it
    # alone learns to rewrite the relation for every subject (locality 0.1 on SmolLM2, see README).
    c_neighbour: float = 1.0
    batch_size: int = 4                        # edits applied together per training step
    grad_clip: float = 100.0                   # max gradient norm of g and α (MEND: 100)
    max_loc_tokens: int = 32                   # locality sentences are cut to this many tokens
    seed: int = 0


# --- the editor network ---------------------------------------------------------------------

class RunningNorm(nn.Module):
    """Per-feature running mean and standard deviation (Welford, float64). Before two batches
    of statistics it is the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta ** 2 * self.count * n / total
        self.count.fill_(float(total))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.count) < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt().clamp_min(1e-8)
        return (x - self.mean.to(x.dtype)) / std.to(x.dtype)


class LowRankResidual(nn.Module):
    """h + act(s_m ⊙ (B A h) + b_m): B starts at zero (the layer starts as the identity); s_m, b_m
    are the scale and shift of mode m (one mode per edited matrix sharing this network)."""

    def __init__(self, dim: int, rank: int, n_modes: int, activation: bool, generator: torch.Generator):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, dim, generator=generator) * math.sqrt(2.0 / dim))
        self.b = nn.Parameter(torch.zeros(dim, rank))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.activation = activation

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:
        z = (h @ self.a.T) @ self.b.T
        z = z * self.scale[mode] + self.shift[mode]
        return h + (torch.relu(z) if self.activation else z)


class EditorNet(nn.Module):
    """g for one weight shape: [u; δ] → normalise → residual low-rank layers → (ũ, δ̃)."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_hidden: int, n_modes: int, generator: torch.Generator):
        super().__init__()
        dim = d_in + d_out
        self.d_in, self.d_out = d_in, d_out
        self.norm = RunningNorm(dim)
        self.layers = nn.ModuleList(
            LowRankResidual(dim, min(rank, dim), n_modes, i < n_hidden, generator) for i in range(n_hidden + 1)
        )

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(torch.cat([u, delta], dim=-1))
        for layer in self.layers:
            h = layer(h, mode)
        return h[:, : self.d_in], h[:, self.d_in :]


@dataclass(frozen=True)
class EditedMatrix:
    name: str            # parameter name, e.g. model.layers.29.mlp.down_proj.weight
    label: str           # short name for diagnostics, e.g. layer29.down_proj
    d_in: int
    d_out: int
    in_by_out: bool      # GPT-2's Conv1D stores (in, out)

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def shape_key(self) -> str:
        return f"{self.d_in}x{self.d_out}"


class MendNetwork(nn.Module):
    """Every g (one per shape) and the per-matrix steps α of one model's edited matrices."""

    def __init__(self, matrices: list[EditedMatrix], hp: MendHparams):
        super().__init__()
        self.matrices = matrices
        generator = torch.Generator().manual_seed(hp.seed)
        shapes: dict[str, list[EditedMatrix]] = {}
        for m in matrices:
            shapes.setdefault(m.shape_key, []).append(m)
        self.modes = {m.name: shapes[m.shape_key].index(m) for m in matrices}
        self.nets = nn.ModuleDict({
            key: EditorNet(ms[0].d_in, ms[0].d_out, hp.rank, hp.n_hidden, len(ms), generator)
            for key, ms in shapes.items()
        })
        self.edit_lrs = nn.Parameter(torch.full((len(matrices),), hp.edit_lr_init))

    def updates(self, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                update_stats: bool = False) -> dict[str, torch.Tensor]:
        """ΔW (out × in, float32) per matrix from its tokens' (u, δ) rows."""
        if update_stats:
            for key, net in self.nets.items():
                rows = [torch.cat(pairs[m.name], dim=-1) for m in self.matrices if m.shape_key == key]
                net.norm.update(torch.cat(rows))
        out = {}
        for index, m in enumerate(self.matrices):
            u, delta = pairs[m.name]
            u_t, d_t = self.nets[m.shape_key](u, delta, self.modes[m.name])
            out[m.name] = -self.edit_lrs[index] * (d_t.T @ u_t)
        return out


# --- gradients, losses, updates --------------------------------------------------------------

def resolve_hparams(mue: ModelUnderEdit, overrides: dict[str, Any] | None) -> MendHparams:
    return _complete(mue, MendHparams.for_family(mue.family.name, overrides or {}, mue.name))


def _complete(mue: ModelUnderEdit, hp: MendHparams) -> MendHparams:
    """`hp` with the model's layers filled in (and checked)."""
    if not hp.modules:
        raise ValueError(f"MEND has no default matrices for family {mue.family.name}; set 'modules'")
    if hp.layers is None:
        n = mue.n_layers
        hp = replace(hp, layers=tuple(range(max(0, n - hp.n_last_layers), n)))
    bad = [layer for layer in hp.layers if not 0 <= layer < mue.n_layers]
    if not hp.layers or bad or list(hp.layers) != sorted(set(hp.layers)):
        raise ValueError(f"MEND layers {list(hp.layers)}: need distinct increasing layers within model "
                         f"{mue.name}'s 0..{mue.n_layers - 1}")
    return hp


def edited_matrices(mue: ModelUnderEdit, hp: MendHparams) -> list[EditedMatrix]:
    out = []
    for layer in hp.layers:
        for module in hp.modules:
            path = f"{mue.family.layer.format(layer)}.{module}"
            mod = mue.module(path)
            weight = mod.weight
            in_by_out = type(mod).__name__ == "Conv1D"
            d_in, d_out = (weight.shape[0], weight.shape[1]) if in_by_out else (weight.shape[1], weight.shape[0])
            out.append(EditedMatrix(f"{path}.weight", f"layer{layer}.{module.rpartition('.')[2]}", int(d_in), int(d_out), in_by_out))
    return out


@dataclass
class TokenBatch:
    """Sequences (right-padded) with the positions and labels of the tokens a loss reads."""

    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor
    cols: torch.Tensor
    labels: torch.Tensor
    n: int

    def nll(self, logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The mean NLL of each sequence's target tokens, averaged (or, reduction="sum", summed)
        over the sequences."""
        token_nll = nn.functional.cross_entropy(logits[self.rows, self.cols].float(), self.labels, reduction="none")
        counts = torch.bincount(self.rows, minlength=self.n).clamp_min(1).float()
        per_seq = torch.zeros(self.n, device=logits.device).index_add(0, self.rows, token_nll) / counts
        return per_seq.sum() if reduction == "sum" else per_seq.mean()


def target_batch(mue: ModelUnderEdit, prompts: list[str], targets: list[str]) -> TokenBatch:
    tok = mue.tokenizer
    sequences, rows, cols, labels = [], [], [], []
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        p = tok(prompt)["input_ids"]
        t = tok(" " + target, add_special_tokens=False)["input_ids"]
        sequences.append(p + t)
        for j, token in enumerate(t):
            rows.append(row), cols.append(len(p) - 1 + j), labels.append(token)
    device = mue.device
    return TokenBatch(mue.pad_batch(sequences), torch.tensor(rows, device=device), torch.tensor(cols, device=device),
                      torch.tensor(labels, device=device), len(sequences))


def edit_batch(mue: ModelUnderEdit, cases: Sequence[EditCase]) -> TokenBatch:
    """Each case's prompt followed by " " + target_new (the loss whose gradient MEND edits with)."""
    return target_batch(mue, [c.text for c in cases], [c.target_new for c in cases])


def gradient_pairs(mue: ModelUnderEdit, matrices: list[EditedMatrix], batch: TokenBatch
                   ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """(u, δ) rows of every token whose δ ≠ 0, per matrix, for the loss Σ_sequences (mean NLL of the
    sequence's target tokens) at the current weights: Σ_rows δ uᵀ is the gradient of that loss
    w.r.t. the (out × in) matrix. Summed, not averaged, over sequences, so that one edit's (u, δ)
    are the same whether it is applied alone or in a batch (training batches several edits, the
    guard applies one). Also returns the mean NLL per sequence."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    handles, flags = [], {}

    def hook_for(name):
        def hook(_module, args, output):
            seen[name] = {"input": args[0], "output": output}
        return hook

    for m in matrices:
        handles.append(mue.module(m.module).register_forward_hook(hook_for(m.name)))
        weight = mue.parameter(m.name)
        flags[m.name] = weight.requires_grad
        weight.requires_grad_(True)  # so that the outputs carry a graph even in a frozen model
    try:
        with torch.enable_grad():
            logits = mue.model(**batch.inputs).logits
            loss = batch.nll(logits, reduction="sum")
            grads = torch.autograd.grad(loss, [seen[m.name]["output"] for m in matrices])
    finally:
        for h in handles:
            h.remove()
        for name, flag in flags.items():
            mue.parameter(name).requires_grad_(flag)
    mask = batch.inputs["attention_mask"].bool()
    pairs = {}
    for m, grad in zip(matrices, grads):
        u = seen[m.name]["input"].detach()[mask].float()
        delta = grad.detach()[mask].float()
        keep = (delta != 0).any(dim=1) & (u != 0).any(dim=1)
        pairs[m.name] = (u[keep], delta[keep])
    return pairs, float(loss.detach()) / batch.n


def _stored(m: EditedMatrix, delta_w: torch.Tensor) -> torch.Tensor:
    return delta_w.T if m.in_by_out else delta_w


def _kl(base_logits: torch.Tensor, edited_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of KL(unedited ‖ edited) of the next-token distributions."""
    base = torch.log_softmax(base_logits.float(), dim=-1)
    edited = torch.log_softmax(edited_logits.float(), dim=-1)
    per_token = (base.exp() * (base - edited)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def locality_batch(mue: ModelUnderEdit, cases: Sequence[EditCase], texts: Sequence[str], max_tokens: int
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Locality text: each case's first neighbourhood prompt followed by " " + its true answer (which
    CounterFact's neighbourhood prompts share), then `texts` cut to `max_tokens` tokens. Returns the
    padded batch and the (row, column) positions where the neighbourhood answers are predicted."""
    tok = mue.tokenizer
    sequences, rows, cols = [], [], []
    for case in cases:
        if not case.neighborhood:
            continue
        prompt = tok(case.neighborhood[0])["input_ids"]
        answer = tok(" " + case.target_true, add_special_tokens=False)["input_ids"] if case.target_true else []
        for j in range(len(answer)):
            rows.append(len(sequences)), cols.append(len(prompt) - 1 + j)
        sequences.append(prompt + answer)
    sequences += [ids for ids in (tok(t)["input_ids"][:max_tokens] for t in texts) if ids]
    device = mue.device
    return (mue.pad_batch(sequences or [[tok.eos_token_id]]), torch.tensor(rows, dtype=torch.long, device=device),
            torch.tensor(cols, dtype=torch.long, device=device))


# --- training --------------------------------------------------------------------------------

@dataclass
class TrainedMend:
    """A trained MEND editor for one model: the network, how it was trained, and where it lives."""

    network: MendNetwork
    hparams: MendHparams
    fingerprint: str
    model_name: str
    data_hash: str
    steps: int
    log: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    path: Path | None = None

    @property
    def key(self) -> str:
        return cache_key(self.fingerprint, self.data_hash, self.hparams, self.steps)

    def summary(self, windows: int = 5) -> list[dict[str, float]]:
        """The log averaged over `windows` equal stretches of training (the loss curve, short)."""
        if not self.log:
            return []
        size = max(1, math.ceil(len(self.log) / windows))
        out = []
        for start in range(0, len(self.log), size):
            chunk = self.log[start : start + size]
            row = {"from_step": chunk[0]["step"], "to_step": chunk[-1]["step"]}
            for k in chunk[0]:
                if k != "step":
                    row[k] = sum(r[k] for r in chunk) / len(chunk)
            out.append(row)
        return out


def data_hash(cases: Sequence[EditCase], loc_texts: Sequence[str] = ()) -> str:
    h = hashlib.sha256()
    for c in cases:
        h.update(json.dumps([c.case_id, c.prompt, c.subject, c.target_new, c.target_true, list(c.paraphrases),
                             list(c.neighborhood)]).encode())
    h.update(b"\x00loc")
    for t in loc_texts:
        h.update(t.encode() + b"\x00")
    return h.hexdigest()[:16]


def cache_key(fingerprint: str, data: str, hp: MendHparams, steps: int) -> str:
    spec = json.dumps([MEND_VERSION, fingerprint, data, asdict(hp), steps], sort_keys=True, default=list)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def train_mend(mue: ModelUnderEdit, cases: Sequence[EditCase], hparams: MendHparams | dict | None = None,
               steps: int = 100, progress: Callable[[int, dict], None] | None = None,
               loc_texts: Sequence[str] = ()) -> TrainedMend:
    """Train MEND's editor networks on `cases` for `steps` steps, the model frozen and unchanged.

    Each step takes `batch_size` cases (a seeded shuffle, epoch after epoch), edits with their
    prompt's gradient, and minimises c_edit · NLL(target_new after the prompt and after its first
    paraphrase, edited) + c_loc · KL(unedited ‖ edited) on the cases' neighbourhood prompts plus as
    many `loc_texts` (seeded draws), token-averaged, + c_neighbour · the same KL only where the
    neighbourhood prompts predict their answer. `progress(step, record)` is called after every step."""
    hp = _complete(mue, hparams) if isinstance(hparams, MendHparams) else resolve_hparams(mue, hparams)
    if not cases:
        raise ValueError("train_mend: no training cases")
    if steps < 1:
        raise ValueError(f"train_mend: steps must be ≥ 1, got {steps}")
    matrices = edited_matrices(mue, hp)
    network = MendNetwork(matrices, hp).to(mue.device)
    rng = random.Random(hp.seed)
    order: list[int] = []
    params_g = [p for name, p in network.named_parameters() if name != "edit_lrs"]
    opt = torch.optim.Adam([{"params": params_g, "lr": hp.lr}, {"params": [network.edit_lrs], "lr": hp.lr_lr}])
    base = {m.name: mue.parameter(m.name) for m in matrices}
    loc_pool = list(loc_texts)
    log: list[dict[str, float]] = []
    start = time.perf_counter()
    network.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        batch_cases = []
        while len(batch_cases) < hp.batch_size:
            if not order:
                order = list(range(len(cases)))
                rng.shuffle(order)
            batch_cases.append(cases[order.pop()])
        pairs, nll_before = gradient_pairs(mue, matrices, edit_batch(mue, batch_cases))
        deltas = network.updates(pairs, update_stats=True)
        edited = {name: base[name] + _stored(m, deltas[name]).to(base[name].dtype)
                  for m, name in ((m, m.name) for m in matrices)}

        prompts = [c.text for c in batch_cases] + [c.paraphrases[0] for c in batch_cases if c.paraphrases]
        targets = [c.target_new for c in batch_cases] + [c.target_new for c in batch_cases if c.paraphrases]
        post = target_batch(mue, prompts, targets)
        logits = torch.func.functional_call(mue.model, edited, args=(), kwargs=post.inputs).logits
        edit_loss = post.nll(logits)

        texts = [rng.choice(loc_pool) for _ in batch_cases] if loc_pool else []
        loc, nb_rows, nb_cols = locality_batch(mue, batch_cases, texts, hp.max_loc_tokens)
        with torch.no_grad():
            base_logits = mue.model(**loc).logits
        edited_logits = torch.func.functional_call(mue.model, edited, args=(), kwargs=loc).logits
        loc_loss = _kl(base_logits, edited_logits, loc["attention_mask"].float())
        if len(nb_rows):
            at = (nb_rows, nb_cols)
            nb_loss = _kl(base_logits[at], edited_logits[at], torch.ones(len(nb_rows), device=mue.device))
        else:
            nb_loss = torch.zeros((), device=mue.device)

        loss = hp.c_edit * edit_loss + hp.c_loc * loc_loss + hp.c_neighbour * nb_loss
        params = params_g + [network.edit_lrs]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        grad_norm = float(nn.utils.clip_grad_norm_(params, hp.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            rel = max(float(deltas[m.name].norm() / base[m.name].float().norm()) for m in matrices)
        record = {"step": step, "edit_nll_before": nll_before, "edit_nll_after": float(edit_loss.detach()),
                  "loc_kl": float(loc_loss.detach()), "neighbour_kl": float(nb_loss.detach()), "loss": float(loss.detach()), "grad_norm": grad_norm,
                  "edit_lr_mean": float(network.edit_lrs.detach().mean()), "update_norm_rel_max": rel,
                  "seconds": time.perf_counter() - t0}
        log.append(record)
        if progress is not None:
            progress(step, record)
    network.eval()
    return TrainedMend(network, hp, mue.fingerprint, mue.name, data_hash(cases, loc_pool), steps, log,
                       time.perf_counter() - start)


# --- the disk cache --------------------------------------------------------------------------

def mend_cache_dir() -> Path:
    path = cache_dir() / "mend"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_stem(model_name: str, fingerprint: str) -> str:
    return f"{model_name.replace('/', '_')}-{fingerprint}"


def save_trained(trained: TrainedMend, directory: Path | None = None) -> Path:
    """Write the editor as <model>-<fingerprint>-<key>.pt with a .json of its metadata beside it."""
    directory = Path(directory) if directory is not None else mend_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{_file_stem(trained.model_name, trained.fingerprint)}-{trained.key}"
    meta = {"mend_version": MEND_VERSION, "model": trained.model_name, "fingerprint": trained.fingerprint,
            "data_hash": trained.data_hash, "steps": trained.steps, "hparams": asdict(trained.hparams),
            "key": trained.key, "seconds": trained.seconds, "summary": trained.summary()}
    path = directory / f"{stem}.pt"
    tmp = path.with_suffix(".pt.part")
    torch.save({"meta": meta, "state": trained.network.state_dict(), "log": trained.log}, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=list))
    trained.path = path
    return path


def load_trained(path: Path, mue: ModelUnderEdit) -> TrainedMend:
    blob = torch.load(path, map_location=mue.device, weights_only=False)
    meta = blob["meta"]
    hp = MendHparams().with_overrides({k: v for k, v in meta["hparams"].items()})
    network = MendNetwork(edited_matrices(mue, hp), hp).to(mue.device)
    network.load_state_dict(blob["state"])
    network.eval()
    return TrainedMend(network, hp, meta["fingerprint"], meta["model"], meta["data_hash"], meta["steps"],
                       blob.get("log", []), meta.get("seconds", 0.0), Path(path))


# Hyperparameters that shape the network: a cached editor must match them to be used.
ARCHITECTURE_FIELDS = ("layers", "n_last_layers", "modules", "rank", "n_hidden")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def cached_editors(mue: ModelUnderEdit, hp: MendHparams, match: Sequence[str] = ARCHITECTURE_FIELDS) -> list[dict]:
    """Metadata of the editors cached for this model (fingerprint) and MEND_VERSION whose
    hyperparameters equal `hp`'s in the fields `match` (default: those that shape the network),
    longest-trained first (then newest)."""
    want = _plain({k: getattr(hp, k) for k in match})
    found = []
    for meta_path in mend_cache_dir().glob(f"{_file_stem(mue.name, mue.fingerprint)}-*.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        hparams = meta.get("hparams") or {}
        if (meta.get("mend_version") == MEND_VERSION and meta.get("fingerprint") == mue.fingerprint
                and {k: hparams.get(k) for k in match} == want and meta_path.with_suffix(".pt").exists()):
            found.append({**meta, "path": str(meta_path.with_suffix(".pt")), "mtime": meta_path.stat().st_mtime})
    return sorted(found, key=lambda m: (m["steps"], m["mtime"]), reverse=True)


class MendNotTrained(LookupError):
    pass


# --- training data ---------------------------------------------------------------------------

def suite_case_ids(model_name: str, data_dir=None, tokenizer=None) -> set[str]:
    """Case ids the shipped suites may edit on this model: its mined HardCF list (or, with no
    list, the 1,000-case screening pool), and every seeded normal sample of up to 100 cases or
    the hard list's size (suites/counterfact, suites/sequential with any --max-cases)."""
    from editguard.mining import mined_suite_path
    from editguard.suites import SCREEN_POOL, counterfact_hard, normal_sample
    from editguard.cases import read_cases

    ids: set[str] = set()
    path = mined_suite_path(model_name)
    if path.exists():
        hard = read_cases(path)
    elif tokenizer is not None:
        hard = counterfact_hard(data_dir, tokenizer)[:SCREEN_POOL]
    else:
        hard = []
    ids.update(c.case_id for c in hard)
    for n in range(1, max(100, len(hard)) + 1):
        ids.update(c.case_id for c in normal_sample(n, data_dir))
    return ids


def training_cases(model_name: str, spec: str = "counterfact", data_dir=None, tokenizer=None
                   ) -> tuple[list[EditCase], int]:
    """MEND's training cases: CounterFact's train split (EasyEdit's counterfact-train.json) without
    any case a shipped suite may edit (`suite_case_ids`), or the cases of a case file. Returns the
    cases and how many were left out."""
    from editguard.suites import load_case_source

    source = "counterfact-train" if spec == "counterfact" else spec
    cases = load_case_source(source, data_dir)
    if not spec.startswith("counterfact"):
        return list(cases), 0
    excluded = suite_case_ids(model_name, data_dir, tokenizer)
    kept = [c for c in cases if c.case_id not in excluded]
    return kept, len(cases) - len(kept)


def locality_sentences(data_dir=None) -> list[str]:
    """ME-PPL sentences that are in neither ME-PPL_50 nor ME-PPL_1k (the corpora perplexity is
    measured on), deduplicated, in file order."""
    from editguard.data import load_ppl_corpus

    held_out = set(load_ppl_corpus("me-ppl-50", data_dir)) | set(load_ppl_corpus("me-ppl-1k", data_dir))
    seen, out = set(), []
    for text in load_ppl_corpus("me-ppl", data_dir):
        if text not in held_out and text not in seen:
            seen.add(text)
            out.append(text)
    return out


# --- the editor ------------------------------------------------------------------------------

_LOADED: dict[str, TrainedMend] = {}


@dataclass
class MEND:
    """MEND with a hypernetwork trained by `editguard train-mend` (cached per model)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: Any = None

    name: ClassVar[str] = "mend"

    def __post_init__(self):
        MendHparams.check_overrides(self.overrides)  # fail at construction, not at the first edit

    def _resolve(self, mue: ModelUnderEdit) -> MendHparams:
        return resolve_hparams(mue, self.overrides)

    def hparams(self, mue: ModelUnderEdit) -> dict[str, Any]:
        return asdict(self._resolve(mue))

    def touched_parameters(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> list[str]:
        return [m.name for m in edited_matrices(mue, self._resolve(mue))]

    def trained(self, mue: ModelUnderEdit) -> TrainedMend:
        hp = self._resolve(mue)
        # The network's shape must match; of the training hyperparameters only those given.
        found = cached_editors(mue, hp, tuple(dict.fromkeys([*ARCHITECTURE_FIELDS, *self.overrides])))
        if not found:
            flag = " --hparams FILE" if self.overrides else ""
            raise MendNotTrained(
                f"no trained MEND editor for model {mue.name} (fingerprint {mue.fingerprint}) with these "
                f"hyperparameters in {mend_cache_dir()}; train one with `editguard train-mend --model {mue.name}"
                f"{flag}` (MEND's hypernetwork must be trained before it can edit)")
        path = found[0]["path"]
        if path not in _LOADED:
            _LOADED[path] = load_trained(Path(path), mue)
        return _LOADED[path]

    def apply(self, mue: ModelUnderEdit, cases: Sequence[EditCase]) -> EditReport:
        if not cases:
            raise ValueError("mend: no cases to apply")
        trained = self.trained(mue)
        network = trained.network
        clock = time.perf_counter()
        batch = edit_batch(mue, cases)
        pairs, nll_before = gradient_pairs(mue, network.matrices, batch)
        with torch.no_grad():
            deltas = network.updates(pairs)
        before = {}
        with torch.no_grad():
            for m in network.matrices:
                weight = mue.parameter(m.name)
                before[m.name] = weight.detach().clone()
                weight.add_(_stored(m, deltas[m.name]).to(weight.dtype))
            nll_after = float(batch.nll(mue.model(**batch.inputs).logits))
        seconds_update = time.perf_counter() - clock
        # The guard adds the editor-agnostic anatomy (per-matrix ‖ΔW‖/‖W‖ and blast radius on
        # normal text, `touched_matrices`); the per-matrix relative norms are also kept here, by
        # short name, as MEMIT keeps its per-layer ones.
        diagnostics: dict[str, Any] = {
            "layers": list(trained.hparams.layers),
            "modules": list(trained.hparams.modules),
            "n_cases": len(cases),
            "n_tokens": max(len(p[0]) for p in pairs.values()),   # bounds the rank of every ΔW
            "edit_nll_before": nll_before,
            "edit_nll_after": nll_after,
            "edit_lr_mean": float(network.edit_lrs.detach().mean()),
            "trained_steps": trained.steps,
            "trained_key": trained.key,
            "trained_data_hash": trained.data_hash,
        }
        vectors = {}
        worst = 0.0
        for m in network.matrices:
            rel = float(deltas[m.name].norm() / before[m.name].float().norm().clamp_min(1e-12))
            diagnostics[f"update_norm_rel_{m.label}"] = rel
            worst = max(worst, rel)
            vectors[f"delta_w_{m.label}"] = deltas[m.name]
        diagnostics["update_norm_rel"] = worst
        diagnostics["seconds_update"] = seconds_update
        return EditReport(touched=[m.name for m in network.matrices], diagnostics=diagnostics, vectors=vectors)


def train_and_cache(mue: ModelUnderEdit, cases: Sequence[EditCase], hp: MendHparams, steps: int,
                    loc_texts: Sequence[str] = (), progress: Callable[[int, dict], None] | None = None,
                    retrain: bool = False) -> tuple[TrainedMend, bool]:
    """The editor cached under (fingerprint, data, hparams, steps, MEND_VERSION), trained and saved
    first if there is none (or `retrain`). Returns it and whether it was trained now."""
    key = cache_key(mue.fingerprint, data_hash(cases, loc_texts), hp, steps)
    path = mend_cache_dir() / f"{_file_stem(mue.name, mue.fingerprint)}-{key}.pt"
    if path.exists() and not retrain:
        return load_trained(path, mue), False
    trained = train_mend(mue, cases, hp, steps, progress=progress, loc_texts=loc_texts)
    save_trained(trained)
    return trained, True
