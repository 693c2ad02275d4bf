"""The statistics every judgement uses, once: the exact one-sided binomial test, the exact
McNemar tests on paired outcomes (one- and two-sided), and Holm's step-down adjustment,
each element-wise over numpy arrays (a float for scalars) so that the diagnostics, their
point-by-point reference and the twins compute the very same numbers."""

from __future__ import annotations

import numpy as np


def binomial_p(successes, trials, p0):
    """Exact one-sided P(X >= successes) for X ~ Binomial(trials, p0), element-wise (1
    where there are no trials or no successes); a float for scalar arguments."""
    # bdtrc(k, n, p) = P(X > k): the same number as scipy.stats.binomtest(..., "greater"),
    # without its per-call overhead (a store can hold thousands of comparisons).
    from scipy.special import bdtrc  # imported here: the CLI should not pay for scipy at start

    successes, trials, p0 = np.broadcast_arrays(np.asarray(successes), np.asarray(trials), np.asarray(p0, float))
    out = np.ones(successes.shape)
    judged = (trials > 0) & (successes > 0)
    if judged.any():
        out[judged] = np.minimum(1.0, bdtrc(successes[judged] - 1, trials[judged], p0[judged]))
    return float(out) if out.ndim == 0 else out


def mcnemar_p(b, c):
    """Exact one-sided McNemar: evidence that the second of two paired classifiers is right
    more often. b = #(first right, second wrong), c = #(first wrong, second right); under
    the null each of the b + c discordant pairs goes either way with probability 1/2."""
    return binomial_p(c, np.add(b, c), 0.5)


def mcnemar_two_sided(b: int, c: int) -> float:
    """Exact two-sided McNemar: min(1, 2 P(X >= max(b, c))), X ~ Binomial(b + c, 1/2)."""
    return min(1.0, 2 * binomial_p(max(b, c), b + c, 0.5)) if b + c else 1.0


def holm(p, group=None) -> np.ndarray:
    """Holm's step-down adjusted p-values (rejecting where adjusted < alpha keeps the
    family-wise error rate at most alpha under any dependence between the tests), within
    each ``group`` (integer codes, groups contiguous and ascending; default: one family).
    The running maximum restarts per group by ranking the scaled values as integer codes
    and offsetting each group past the last: exact, no arithmetic on the p-values."""
    p = np.asarray(p, dtype=float)
    if not len(p):
        return np.empty(0)
    group = np.zeros(len(p), dtype=np.int64) if group is None else np.asarray(group)
    order = np.lexsort((np.arange(len(p)), p, group))  # stable argsort of p within each group
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    sizes = np.diff(np.r_[starts, len(p)])
    rank = np.arange(len(p)) - np.repeat(starts, sizes)
    scaled = np.minimum(1.0, (np.repeat(sizes, sizes) - rank) * p[order])
    values, codes = np.unique(scaled, return_inverse=True)
    segment = np.repeat(np.arange(len(starts)), sizes) * len(values)
    adjusted = np.empty(len(p))
    adjusted[order] = values[np.maximum.accumulate(codes + segment) - segment]  # monotone within a group
    return adjusted
