"""Deterministic sharding of a suite across CI jobs (`--editguard-shard i/n`).

Units of work (a single case, or a whole edit sequence, which must stay together) are dealt
round-robin in collection order: every job computes the same split from the same suite, and
shard sizes differ by at most one unit.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def parse_shard(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3): the second of three shards (1-based, as CI matrices count)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 1/4), got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard {text!r}: need 1 <= i <= n and n >= 1")
    return index, count


def shard_members(units: Sequence[Hashable], index: int, count: int) -> list[bool]:
    """For each item (given by the unit it belongs to, in collection order) whether shard
    `index` of `count` runs it. Items of one unit always land in the same shard."""
    order: dict[Hashable, int] = {}
    for unit in units:
        order.setdefault(unit, len(order))
    return [order[unit] % count == index - 1 for unit in units]
