"""The cost model of speculative decoding: what a verification pass and a draft step cost,
and the acceptance a draft needs to pay.

Reads measured pass costs (:func:`draftalign.timing.pass_cost`); writes nothing. A target
pass over ``k`` new tokens costs ``t(k) = a + b k``; Chapter 1 measures the line, Chapter 5
maps where a draft breaks even with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .metrics import expected_tau
from .timing import pass_cost

__all__ = ["CostModel", "MeasuredCost", "fit_cost_model", "step_ms", "speedup_grid", "alpha_needed"]



@dataclass(frozen=True)
class CostModel:
    """A target pass over ``k`` new tokens costs ``t(k) = a + b k`` (ms); a draft step
    costs ``c`` one-token target passes. Then a block of ``gamma`` drafts costs
    ``gamma c + t(gamma + 1) / t(1)`` one-token passes, and the speed-up over plain
    decoding is ``tau / (gamma c + t(gamma + 1) / t(1))``: book eq. speedup with the
    verification pass's own growth."""

    a_ms: float
    b_ms: float

    @classmethod
    def memory_bound(cls) -> "CostModel":
        """A pass over a few tokens costs as much as over one (``b = 0``): eq. speedup itself."""
        return cls(1.0, 0.0)

    @property
    def t1_ms(self) -> float:
        return self.a_ms + self.b_ms

    def verify(self, k) -> float | np.ndarray:
        """``t(k) / t(1)``."""
        return (self.a_ms + self.b_ms * np.asarray(k, dtype=float)) / self.t1_ms

    def speedup(self, tau, gamma: int, c):
        return np.asarray(tau) / (gamma * np.asarray(c) + self.verify(gamma + 1))

    def predicted(self, alpha: float, gammas: Sequence[int], c: float) -> pd.Series:
        """Speed-up at each gamma with tau = E[tau](alpha, gamma) (eq. tau-iid)."""
        return pd.Series({int(g): float(self.speedup(expected_tau(alpha, int(g)), int(g), c)) for g in gammas},
                         name="predicted speed-up").rename_axis("gamma")

    def best_gamma(self, alpha: float, c: float, gammas: Sequence[int] = range(1, 9)) -> int:
        s = self.predicted(alpha, gammas, c)
        return int(s.idxmax())


@dataclass(frozen=True)
class MeasuredCost(CostModel):
    """A :class:`CostModel` that reads ``t(k)`` from measured points (linear between them, the
    fitted line ``a + b k`` beyond them) instead of the line: for a runtime whose pass cost
    is not a straight line in ``k`` (threads that a one-token pass leaves idle, kernels that
    change with the number of rows). ``points``: ``((k, ms), ...)`` with ``k = 1`` among them."""

    points: tuple = ()

    @property
    def t1_ms(self) -> float:
        return float(dict(self.points)[1])

    def verify(self, k) -> float | np.ndarray:
        ks, ms = (np.array(v, dtype=float) for v in zip(*sorted(self.points)))
        k = np.asarray(k, dtype=float)
        inside = np.interp(k, ks, ms)
        outside = self.a_ms + self.b_ms * k
        return np.where((k >= ks[0]) & (k <= ks[-1]), inside, outside) / self.t1_ms


def fit_cost_model(costs: pd.DataFrame) -> CostModel:
    """Least-squares line ``ms = a + b k`` through :func:`draftalign.timing.pass_cost`'s medians."""
    if len(costs) < 2:
        raise ValueError("need pass costs at two or more k to fit a line")
    b, a = np.polyfit(costs.k.to_numpy(float), costs.ms_median.to_numpy(float), 1)
    return CostModel(float(a), float(b))


def step_ms(model, *, prefix_len: int, repeats: int, seed: int = 0) -> float:
    """Median ms of one cached one-token step of ``model`` (a draft step)."""
    return float(pass_cost(model, prefix_len=prefix_len, ks=(1,), repeats=repeats, seed=seed).ms_median.iloc[0])


# -- break-even ----------------------------------------------------------------------------------------

def speedup_grid(alphas: Sequence[float], cs: Sequence[float], gamma: int, cost: CostModel) -> np.ndarray:
    """Speed-up ``[len(cs), len(alphas)]`` for acceptance ``alpha`` and draft cost ``c``."""
    taus = np.array([expected_tau(float(a), gamma) for a in alphas])  # [A]
    return np.asarray(cost.speedup(taus[None, :], gamma, np.asarray(cs, dtype=float)[:, None]))


def alpha_needed(c: float, gamma: int, cost: CostModel, speedup: float = 1.0) -> float:
    """The smallest acceptance alpha whose E[tau] reaches ``speedup`` at draft cost ``c``
    (``speedup = 1``: the break-even contour); ``nan`` if even alpha = 1 does not."""
    need = speedup * (gamma * c + float(cost.verify(gamma + 1)))  # E[tau] needed
    if need <= 1.0:
        return 0.0
    if need > gamma + 1:
        return float("nan")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # E[tau] grows with alpha: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tau(mid, gamma) < need else (lo, mid)
    return hi
