"""The precision a measurement runs in: float32, or bfloat16 autocast (matrix products in 16 bits,
the weights untouched), and the one detection `auto` uses everywhere — the downstream probes
(--editguard-downstream-precision), v* and the perplexity probe (--editguard-edit-precision).
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from editguard.models.loading import ModelUnderEdit
from editguard.options import PRECISIONS

# What resolve_precision returns: float16 only for a model held in float16.
RESOLVED_PRECISIONS = ("float32", "bfloat16", "float16")


def cpu_multiplies_bfloat16_natively() -> bool:
    """AVX-512 BF16 or AMX: bfloat16 products in hardware, not emulated."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


@functools.lru_cache(maxsize=1)
def cpu_bfloat16_autocast_is_faster() -> bool:
    """Measured, not assumed: a CPU flag alone chose bfloat16 autocast where oneDNN then emulated it
    (issue 30). A product of a model's shape (256 × 576 by 576 × 1536, SmolLM2's MLP), best of 5,
    under bfloat16 autocast against float32: bfloat16 only when it is at least 20 % faster."""
    if not cpu_multiplies_bfloat16_natively():
        return False
    a, b = torch.randn(256, 576), torch.randn(576, 1536)

    def best(autocast: bool) -> float:
        times = []
        for _ in range(6):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                for _ in range(4):
                    a @ b
            times.append(time.perf_counter() - start)
        return min(times[1:])   # the first run warms oneDNN up

    return best(True) < 0.8 * best(False)


def resolve_precision(mue: ModelUnderEdit, precision: str = "auto", what: str = "precision") -> str:
    """The precision `precision` means for `mue` ("auto", "float32" or "bfloat16"; `what` names the
    option in the error). "auto" is bfloat16 where the hardware multiplies it natively (a CUDA GPU
    with bf16, a CPU with AVX-512 BF16 or AMX: 2.5× faster than float32 on a 2-core machine with
    AVX-512 BF16) and float32 elsewhere: oneDNN also runs bf16 on a plain AVX-512 CPU, emulated,
    and there autocast ME-PPL_50 on SmolLM2-135M took 23.2 s against 7.2 s in float32 (2026-11-29,
    Xeon without AVX-512 BF16). On a CPU the flag is confirmed by timing one product
    (`cpu_bfloat16_autocast_is_faster`). A model already held in 16 bits keeps its dtype."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if mue.dtype in (torch.bfloat16, torch.float16):
        return str(mue.dtype).removeprefix("torch.")
    if precision != "auto":
        return precision
    if mue.device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if mue.device.type == "cpu":
        return "bfloat16" if cpu_bfloat16_autocast_is_faster() else "float32"
    return "float32"


def precision_context(mue: ModelUnderEdit, precision: str):
    """Autocast to bfloat16 for a float32 model asked to run in bfloat16; otherwise nothing (a
    16-bit model already runs in its own dtype)."""
    if precision not in RESOLVED_PRECISIONS:
        raise ValueError(f"a resolved precision ({', '.join(RESOLVED_PRECISIONS)}) is needed here; got {precision!r}")
    if precision == "bfloat16" and mue.dtype == torch.float32:
        return torch.autocast(mue.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
