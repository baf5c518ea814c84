"""Statistics over a few seeds: a percentile bootstrap interval of the mean, and reading a
training curve at a given cost.

Claim (a) is measured per seed (the monolithic model and the pair trained with the same
seed make one pair of curves), so resampling is over seeds and keeps each seed's pair
together: each value passed here is already one seed's paired quantity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval [lo, hi] at ``level``, over ``n`` values."""

    mean: float
    lo: float
    hi: float
    level: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "level": self.level, "n": self.n}


def bootstrap_mean(
    values: list[float], level: float = 0.95, resamples: int = 20_000, seed: int = 0
) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval: ``resamples`` draws of
    ``len(values)`` values with replacement, the interval holding the central ``level``
    of their means. Seeded, so a report reproduces to the digit."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("give at least one value")
    draws = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    means = data[draws].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return Interval(float(data.mean()), float(lo), float(hi), level, int(data.size))


def value_at(costs: list[float], values: list[float], cost: float) -> float | None:
    """A curve's value at ``cost``, linear between its points; None outside them."""
    if not costs[0] <= cost <= costs[-1]:
        return None
    return float(np.interp(cost, costs, values))


def first_reach(costs: list[float], values: list[float], target: float) -> float | None:
    """The first cost at which a falling curve reaches ``target`` (linear between points),
    None if it never does."""
    if values[0] <= target:
        return float(costs[0])
    for i in range(1, len(values)):
        if values[i] <= target:
            t = (values[i - 1] - target) / (values[i - 1] - values[i])
            return float(costs[i - 1] + t * (costs[i] - costs[i - 1]))
    return None
