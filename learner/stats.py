"""Step metrics summed over micro-batches and ranks with one all-reduce, so that what rank 0
reports is the global, weight-averaged value rather than its own shard's."""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist

from learner.engine import device


class Stats:
    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.weights: dict[str, float] = defaultdict(float)

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        self.sums[name] += float(value) * float(weight)
        self.weights[name] += float(weight)

    def total(self, name: str, value: float) -> None:
        """A plain sum, reported as is (a name whose weights sum to 0 reports its sum)."""
        self.sums[name] += float(value)
        self.weights[name] += 0.0

    def reduce(self) -> dict[str, float]:
        """Weighted means (or sums) over every rank. A collective: every rank calls it, having
        added the same names."""
        names = sorted(self.sums)
        both = torch.tensor([[self.sums[n] for n in names], [self.weights[n] for n in names]],
                            dtype=torch.float64, device=device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(both)
        return {n: (s / w if w else s) for n, s, w in zip(names, *both.tolist(), strict=True)}
