"""Verdicts against a paper, computed by one stated rule (never typed as prose).

A paper's claim has a direction: who wins (A beats B), the sign of a gain (pretraining helps), or a
trend (the gain grows from one level to the next, each step a direction). Ours is tested on the
differences that carry the claim, oriented so that a positive difference goes the paper's way, paired
by seed or fold where both sides have per-seed values (else Welch's from means, stds and counts),
with a 95% t interval. Three outcomes:

- **agrees**: the interval lies above 0 (our direction is the paper's, beyond the interval);
- **disagrees**: the interval lies below 0 (the opposite direction, excluding the paper's);
- **not resolved**: the interval spans 0, or there are too few seeds for one (n < 2).

So "agree: yes" with an interval that contains 0 is "not resolved". :data:`RULE` states this on pages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Outcome = Literal["agrees", "disagrees", "not resolved"]
OUTCOMES: tuple[Outcome, ...] = ("agrees", "disagrees", "not resolved")
LEVEL = 0.95
RULE = ("Verdict rule (`tasksim_ray.papers.verdict`): the paper's claim as a direction; our differences oriented "
        "so that positive goes the paper's way, paired by seed/fold (Welch's from means and stds where no per-seed "
        "values exist), 95% t interval: *agrees* when it lies above 0, *disagrees* when below 0, *not resolved* "
        "when it spans 0 or there is a single seed.")


@dataclass(frozen=True)
class Verdict:
    """One claim tested: ``estimate`` is the mean difference in the paper's direction (positive: its
    way), ``ci`` its 95% interval (None below two seeds)."""

    claim: str
    outcome: Outcome
    estimate: float
    ci: tuple[float, float] | None
    n: int
    paired: bool = True
    unit: str = "seeds"  # what the n paired differences are over: seeds, folds, targets

    def line(self, digits: int = 3) -> str:
        """``claim: outcome (difference d [lo, hi], n seeds, paired)``, the form pages print."""
        if self.ci is None:
            detail = f"difference {self.estimate:+.{digits}g}, {self.n} {self.unit}: no interval"
        else:
            lo, hi = self.ci
            detail = (f"difference {self.estimate:+.{digits}g} [{lo:+.{digits}g}, {hi:+.{digits}g}], {self.n} "
                      f"{self.unit}, {'paired' if self.paired else 'Welch'}")
        return f"{self.claim}: **{self.outcome}** ({detail})"

    def to_dict(self) -> dict[str, object]:
        return {"claim": self.claim, "outcome": self.outcome, "estimate": self.estimate,
                "ci": list(self.ci) if self.ci else None, "n": self.n, "paired": self.paired, "unit": self.unit}


def outcome(ci: tuple[float, float] | None) -> Outcome:
    """The rule itself, on an interval of differences oriented the paper's way."""
    if ci is None or not all(math.isfinite(x) for x in ci):
        return "not resolved"
    lo, hi = ci
    return "agrees" if lo > 0 else "disagrees" if hi < 0 else "not resolved"


def paired(claim: str, diffs: Sequence[float], level: float = LEVEL, unit: str = "seeds") -> Verdict:
    """A verdict on per-seed differences already oriented the paper's way (positive: its direction);
    ``unit`` names what they are over (seeds, folds, targets)."""
    d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], dtype=float)
    if d.size == 0:
        return Verdict(claim, "not resolved", float("nan"), None, 0, unit=unit)
    mean = float(d.mean())
    if d.size < 2:
        return Verdict(claim, "not resolved", mean, None, int(d.size), unit=unit)
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1)) * se
    ci = (mean - half, mean + half)
    return Verdict(claim, outcome(ci), mean, ci, int(d.size), unit=unit)


def welch(claim: str, a: tuple[float, float | None, int | None], b: tuple[float, float | None, int | None],
          level: float = LEVEL) -> Verdict:
    """A verdict on ``a - b`` (oriented the paper's way) from (mean, std, n) of each side, unpaired."""
    (ma, sa, na), (mb, sb, nb) = a, b
    diff = ma - mb
    n = min(na or 1, nb or 1)
    if sa is None or sb is None or not na or not nb or na < 2 or nb < 2:
        return Verdict(claim, "not resolved", diff, None, n, paired=False)
    va, vb = sa ** 2 / na, sb ** 2 / nb
    se = math.sqrt(va + vb)
    if se == 0:
        ci = (diff, diff)
    else:
        dof = (va + vb) ** 2 / ((va ** 2 / (na - 1) if va else 0) + (vb ** 2 / (nb - 1) if vb else 0) or 1)
        half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
        ci = (diff - half, diff + half)
    return Verdict(claim, outcome(ci), diff, ci, n, paired=False)


def better(claim: str, a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> Verdict:
    """The paper says ``a`` beats ``b``: paired per-seed values of each (same seeds, same order)."""
    if len(a) != len(b):
        raise ValueError(f"{claim}: {len(a)} and {len(b)} values cannot be paired")
    sign = 1.0 if higher_is_better else -1.0
    return paired(claim, [sign * (x - y) for x, y in zip(a, b)])


def trend(claim: str, levels: Sequence[Sequence[float]], increasing: bool) -> Verdict:
    """A monotonic trend over ordered levels (per-seed values at each, paired by seed): each step is a
    direction; the trend agrees when every step agrees, disagrees when any step disagrees, otherwise it
    is not resolved. The estimate is the smallest step's mean (in the paper's direction)."""
    steps = [better(f"{claim} (step {i + 1})", b, a, increasing) for i, (a, b) in enumerate(zip(levels, levels[1:]))]
    return all_of(claim, steps)


def tally(verdicts: Sequence[Verdict]) -> str:
    """``a agree, d disagree, u not resolved (of n)``: a summary line's count."""
    count = {o: sum(v.outcome == o for v in verdicts) for o in OUTCOMES}
    return (f"{count['agrees']} agree, {count['disagrees']} disagree, {count['not resolved']} not resolved "
            f"(of {len(verdicts)})")


def all_of(claim: str, parts: Sequence[Verdict]) -> Verdict:
    """A claim made of several (A beats each of B, C, ...): agrees when every part agrees, disagrees
    when any part disagrees, otherwise not resolved; the estimate is the weakest part's."""
    if not parts:
        return Verdict(claim, "not resolved", float("nan"), None, 0)
    worst = min(parts, key=lambda v: v.estimate if math.isfinite(v.estimate) else -math.inf)
    result: Outcome = ("disagrees" if any(v.outcome == "disagrees" for v in parts) else
                       "agrees" if all(v.outcome == "agrees" for v in parts) else "not resolved")
    return Verdict(claim, result, worst.estimate, worst.ci, worst.n, worst.paired)
