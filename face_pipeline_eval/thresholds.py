"""Choosing a match threshold from labelled pairs, and its error rates: for benchmarks and tests.

The pipeline never calls these: raw spaces ship with thresholds (`assignment.thresholds_for_space`) and a
trained space gets the raw space's error rates (`promotion_gate.match_thresholds`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["choose_threshold", "rates_at"]


def _scores_1d(scores: ArrayLike, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError(f"{name} is empty: need at least one labelled pair")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return scores


def choose_threshold(same_scores: ArrayLike, diff_scores: ArrayLike, target_far: float = 1e-3) -> float:
    """The lowest threshold whose false-accept rate on `diff_scores` is at most `target_far`.

    same_scores: (a,) cosine of same-person pairs; diff_scores: (b,) cosine of different-person pairs.
    A pair is accepted when score >= threshold. Among the thresholds with the same rates on these
    pairs, the one halfway between the highest accepted stranger score and the next same-person score
    is returned, so that the choice does not sit on a sample point.
    """
    if not 0.0 <= target_far < 1.0:
        raise ValueError(f"target_far must be in [0, 1), got {target_far!r}")
    same = _scores_1d(same_scores, "same_scores")
    diff = np.sort(_scores_1d(diff_scores, "diff_scores"))[::-1]
    allowed = int(np.floor(target_far * diff.size + 1e-9))  # strangers that may score >= threshold
    if allowed >= diff.size:
        return float(min(diff.min(), same.min()))
    limit = diff[allowed]  # the best stranger that must be rejected: threshold > limit
    above = same[same > limit]
    lowest_ok = float(np.nextafter(limit, np.inf))
    upper = diff[allowed - 1] if allowed > 0 else np.inf  # do not accept one more stranger
    if above.size:
        candidate = (limit + min(above.min(), upper)) / 2.0
        return float(max(candidate, lowest_ok))
    return lowest_ok


def rates_at(threshold: float, same_scores: ArrayLike, diff_scores: ArrayLike) -> tuple[float, float]:
    """(false-accept rate, false-reject rate) of `threshold` on labelled pairs (accept: score >= threshold)."""
    same = _scores_1d(same_scores, "same_scores")
    diff = _scores_1d(diff_scores, "diff_scores")
    return float((diff >= threshold).mean()), float((same < threshold).mean())
