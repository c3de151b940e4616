"""Small statistics the reports need, without a SciPy dependency."""

from __future__ import annotations

import math
from typing import Sequence


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            result[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return result


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two sequences of the same length ≥ 2, got {len(x)} and {len(y)}")
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of the ranks)."""
    return pearson(ranks(x), ranks(y))


# Normal quantiles: a one-sided 95% bound (what gates compare with), a two-sided 95% interval
# (what tables show).
Z_ONE_SIDED_95 = 1.645
Z_TWO_SIDED_95 = 1.96


def wilson_interval(successes: int, n: int, z: float = Z_ONE_SIDED_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion. With the default z each side is a
    one-sided 95% bound: the lower end is what the gates compare with a task's random baseline."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    center = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (center - spread) / denom), min(1.0, (center + spread) / denom)


def wilson_lower_bound(successes: int, n: int, z: float = Z_ONE_SIDED_95) -> float:
    """The lower end of the Wilson score interval: with the default z, a one-sided 95% lower bound
    on the success rate (what the edit-quality gates compare with their minimum). 0 for n = 0."""
    return wilson_interval(successes, n, z)[0]


def proportion_stderr(successes: int, n: int) -> float:
    """Standard error of a mean of n 0/1 scores as lm-evaluation-harness reports it (`acc_stderr`):
    the sample standard deviation (n − 1) over √n, i.e. √(p(1 − p)/(n − 1)); NaN for n < 2."""
    if n < 2:
        return float("nan")
    p = successes / n
    return math.sqrt(p * (1 - p) / (n - 1))
