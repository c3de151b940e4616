"""MEND's editor networks. g reads [u; δ] normalised by running per-feature mean and standard
deviation (statistics collected while training) and is a stack of residual low-rank layers
h ← h + act(s_m ⊙ B A h + b_m) with B = 0 at initialisation: an untrained g is the identity, so
its update is the plain gradient step −α ∇_W L (tested)."""

from __future__ import annotations

import math

import torch
from torch import nn

from editguard.editors.mend.hparams import EditedMatrix, MendHparams


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
