"""Uncertainty for eval tables: seeded bootstrap intervals, analytic standard errors and paired
differences between two prediction files scored on the same samples.

Bootstrap: B resamples of the n samples with replacement (each resample's counts per sample from
one bincount, in chunks, so 100k samples x 1,000 resamples stays small), the mean of each; the
95 % interval is the 2.5 and 97.5 percentiles of those means. The same seed gives every file the
same resamples, so paired differences use common resamples: d_i = a_i - b_i per sample, the
interval of mean(d) and the share of resamples whose mean(d) <= 0 (a one-sided bootstrap p-value for "a is better").
Analytic (He et al.): SE = s / sqrt(n) with the sample standard deviation (ddof 1), interval
mean +- 1.96 SE.
"""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054


def resample_means(values: np.ndarray, n_boot: int, seed: int, chunk: int = 16) -> np.ndarray:
    """(B, p) bootstrap means of the columns of ``values`` (n, p)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n == 0 or n_boot <= 0:
        return np.zeros((0, values.shape[1]))
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out.append(counts @ values / n)
    return np.concatenate(out)


def bootstrap_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(p, 2) percentile 95 % intervals of the column means; NaN when there are no samples."""
    means = resample_means(values, n_boot, seed)
    if len(means) == 0:
        return np.full((np.asarray(values).shape[1], 2), np.nan)
    return np.percentile(means, [2.5, 97.5], axis=0).T


def standard_error(values: np.ndarray) -> np.ndarray:
    """Per column s / sqrt(n) (ddof 1, as pandas' sem); NaN below two samples."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 2:
        return np.full(values.shape[1], np.nan)
    return values.std(axis=0, ddof=1) / np.sqrt(n)


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """mean(a - b) per column, its bootstrap 95 % interval and the share of resamples <= 0."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    means = resample_means(d, n_boot, seed)
    if len(means) == 0:
        nan = np.full(d.shape[1], np.nan)
        return {"diff": nan, "low": nan, "high": nan, "share_le_0": nan}
    lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
    return {"diff": d.mean(axis=0), "low": lo, "high": hi, "share_le_0": (means <= 0).mean(axis=0)}
