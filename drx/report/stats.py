"""Paired statistics of ablation rows against a baseline row, split by split.

Every variant of an ablation is trained and tested on the same persisted splits, so the unit of
comparison is the per-split difference Δ = variant − baseline. This module turns those
differences into the numbers an ablation table shows: the median Δ, a percentile-bootstrap
interval of it, an exact two-sided Wilcoxon signed-rank p-value, its Holm adjustment within one
table column, and the matched-pairs rank-biserial effect size.

Pure functions of numpy/pandas values; scipy and statsmodels do the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from drx.errors import DataError

__all__ = [
    "SMALL_N",
    "WilcoxonResult",
    "paired_deltas",
    "bootstrap_median_ci",
    "wilcoxon_exact",
    "min_attainable_p",
    "can_reach",
    "holm",
    "rank_biserial",
    "compare_to_baseline",
]

#: With fewer paired splits than this, the exact two-sided Wilcoxon floor 2/2^n is above 0.05
#: (n=5 gives 0.0625), so no p-value can be significant at the usual level.
SMALL_N = 6

# Differences are rounded to this many decimals before ranking: SRCC/PLCC differences that are
# equal on paper (0.912 − 0.904 vs 0.913 − 0.905) differ in the last float bits, and scipy's
# docs advise rounding so such pairs become genuine ties instead of arbitrary rank orders.
_ROUND_DECIMALS = 9

# Largest count of non-zero differences for which tied data get an exact permutation p-value
# (all 2^n sign flips are enumerated; 2^16 flips take milliseconds).
_MAX_ENUMERATED = 16


@dataclass(frozen=True)
class WilcoxonResult:
    """Outcome of :func:`wilcoxon_exact`.

    ``statistic`` is the smaller of the positive and negative rank sums (scipy's two-sided
    convention); ``n`` counts finite differences, ``n_nonzero`` those left after dropping zeros;
    ``method`` names the null distribution actually used.
    """

    statistic: float
    p_value: float
    n: int
    n_nonzero: int
    method: str


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def paired_deltas(variant_values: pd.Series, baseline_values: pd.Series) -> pd.Series:
    """Per-split Δ = variant − baseline, only on splits where both values are finite.

    Both series are indexed by split; the result is indexed by the shared splits, sorted.
    """
    for name, s in (("variant_values", variant_values), ("baseline_values", baseline_values)):
        if s.index.has_duplicates:
            dup = sorted(set(s.index[s.index.duplicated()].tolist()))
            raise DataError(f"{name} has more than one value for split(s) {dup}")
    v = pd.to_numeric(variant_values, errors="coerce").astype(float)
    r = pd.to_numeric(baseline_values, errors="coerce").astype(float)
    v = v[np.isfinite(v.to_numpy())]
    r = r[np.isfinite(r.to_numpy())]
    shared = v.index.intersection(r.index).sort_values()
    out = v.loc[shared] - r.loc[shared]
    out.index.name = "split"
    out.name = "delta"
    return out


def bootstrap_median_ci(
    deltas: Sequence[float] | pd.Series,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``deltas`` (seeded, reproducible).

    The percentile method is used rather than scipy's default BCa: with ~10 splits the median's
    bootstrap distribution takes only a handful of distinct values and its jackknife
    acceleration is degenerate, so BCa is unstable or undefined; the percentile interval only
    needs quantiles of the resampled medians and stays within the range of the data.

    Returns ``(nan, nan)`` for fewer than 2 finite values (no spread can be estimated) and the
    degenerate ``(d, d)`` when all values are equal. The interval always contains the sample
    median: at tiny n the discreteness of the resampled medians could in principle put a
    quantile past it, and a table must never print an estimate outside its own interval.
    """
    d = _finite(deltas)
    if d.size < 2:
        return (float("nan"), float("nan"))
    med = float(np.median(d))
    if np.all(d == d[0]):
        return (float(d[0]), float(d[0]))
    res = stats.bootstrap(
        (d,),
        np.median,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (min(low, med), max(high, med))


def wilcoxon_exact(deltas: Sequence[float] | pd.Series) -> WilcoxonResult:
    """Two-sided paired Wilcoxon signed-rank test on per-split differences.

    Differences are rounded to 1e-9 first (float ties, see scipy's docs); zeros are dropped
    (Wilcoxon's own convention). The null distribution is then, in order of preference:

    - ``"exact"``: scipy's exact signed-rank distribution (no ties among the non-zero |Δ|);
    - ``"exact permutation (ties)"``: all 2^n sign flips enumerated, exact given the tied ranks
      (n ≤ 16 non-zero differences);
    - ``"normal approximation (ties)"``: tie-corrected normal approximation for larger tied samples.

    No finite differences → p = NaN (``method="no data"``); all differences zero → p = 1
    (``method="all differences zero"``): there is no evidence of any shift.
    """
    d = np.round(_finite(deltas), _ROUND_DECIMALS)
    n = int(d.size)
    nz = d[d != 0]
    m = int(nz.size)
    if n == 0:
        return WilcoxonResult(float("nan"), float("nan"), 0, 0, "no data")
    if m == 0:
        return WilcoxonResult(0.0, 1.0, n, 0, "all differences zero")
    has_ties = np.unique(np.abs(nz)).size < m
    if not has_ties:
        method, label = "exact", "exact"
    elif m <= _MAX_ENUMERATED:
        method, label = stats.PermutationMethod(n_resamples=2**m), "exact permutation (ties)"
    else:
        method, label = "asymptotic", "normal approximation (ties)"
    res = stats.wilcoxon(nz, zero_method="wilcox", alternative="two-sided", method=method)
    return WilcoxonResult(float(res.statistic), float(res.pvalue), n, m, label)


def min_attainable_p(n: int) -> float:
    """Smallest two-sided p an exact Wilcoxon test can give with ``n`` paired splits: 2/2^n.

    It is reached only when all n differences share one sign. With fewer than 6 splits it is
    above 0.05 (n=5: 0.0625), so no result can be significant at that level.
    """
    n = int(n)
    if n < 1:
        return float("nan")
    return min(1.0, 2.0 / 2.0**n)


def can_reach(n: int, alpha: float = 0.05) -> bool:
    """Whether an exact two-sided Wilcoxon test on ``n`` paired splits can give p ≤ ``alpha``."""
    p = min_attainable_p(n)
    return bool(np.isfinite(p) and p <= alpha)


def holm(p_values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray | pd.Series:
    """Holm step-down adjusted p-values (statsmodels ``multipletests(method="holm")``).

    NaN entries (comparisons that could not be tested) are passed through untouched and are
    not members of the family, so they do not make the correction stricter. A Series input
    gives a Series with the same index.
    """
    is_series = isinstance(p_values, pd.Series)
    p = np.asarray(p_values, dtype=float).ravel()
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    if is_series:
        return pd.Series(out, index=p_values.index, name=p_values.name)
    return out


def rank_biserial(deltas: Sequence[float] | pd.Series) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014): (R+ − R−) / (R+ + R−).

    Ranks are those of |Δ| among non-zero differences (average ranks for ties, zeros dropped as
    in the Wilcoxon test). +1: every split favours the variant; −1: every split favours the
    baseline. NaN without data; 0 when all differences are zero (no direction).
    """
    d = np.round(_finite(deltas), _ROUND_DECIMALS)
    if d.size == 0:
        return float("nan")
    nz = d[d != 0]
    if nz.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(nz))
    r_plus = ranks[nz > 0].sum()
    r_minus = ranks[nz < 0].sum()
    return float((r_plus - r_minus) / (r_plus + r_minus))


def compare_to_baseline(
    per_split: pd.DataFrame,
    baseline: str,
    metric: str,
    benchmark: str,
    variants: Sequence[str] | None = None,
    *,
    splits: Iterable[int] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired comparison of each non-baseline variant with ``baseline`` on one table column.

    ``per_split`` is the tidy frame (``variant, benchmark, split, status, <metric>``); only rows
    of ``benchmark`` with status ``"ok"`` and a finite ``metric`` count, optionally restricted to
    ``splits``. Returns one row per non-baseline variant (index ``variant``, in the order of
    ``variants`` or of appearance) with: ``n_paired``, ``deltas`` (per-split Series),
    ``delta_median``, ``delta_mean``, ``ci_low``, ``ci_high``, ``statistic``, ``p_raw``,
    ``p_holm``, ``rbc``, ``test_method``.

    The Holm family is the set of non-baseline rows of this one column (one benchmark × one
    metric): that is the set of claims a reader makes when scanning a column ("removing X hurts
    on KonIQ SRCC"). Columns are not pooled: SRCC and PLCC of one benchmark are nearly the same
    measurement, and pooling them would double-count. With fewer than 2 paired splits no
    interval or test is computed (NaN). Each bootstrap uses ``seed`` afresh, so a cell's
    interval does not depend on which other rows the table has.
    """
    required = {"variant", "benchmark", "split", "status", metric}
    missing_cols = required - set(per_split.columns)
    if missing_cols:
        raise DataError(f"per-split frame lacks column(s) {sorted(missing_cols)}")
    rows = per_split[per_split["benchmark"] == benchmark]
    if splits is not None:
        rows = rows[rows["split"].isin(list(splits))]
    key = ["variant", "split"]
    dup = rows.duplicated(key, keep=False)
    if dup.any():
        bad = rows.loc[dup, key].drop_duplicates().to_records(index=False).tolist()
        raise DataError(
            f"per-split frame has several rows for (variant, split) {bad[:5]} on benchmark "
            f"{benchmark!r}; expected one row per trial"
        )
    good = rows[(rows["status"] == "ok")]
    values = {
        v: pd.Series(g[metric].to_numpy(dtype=float), index=g["split"].astype(int).to_numpy())
        for v, g in good.groupby("variant", sort=False)
    }
    if variants is None:
        variants = list(dict.fromkeys(per_split["variant"].tolist()))
    if baseline not in variants:
        variants = [baseline, *variants]
    base_vals = values.get(baseline, pd.Series(dtype=float))

    records = []
    for v in variants:
        if v == baseline:
            continue
        d = paired_deltas(values.get(v, pd.Series(dtype=float)), base_vals)
        n = int(d.size)
        if n >= 2:
            low, high = bootstrap_median_ci(d, confidence, n_resamples, seed)
            w = wilcoxon_exact(d)
            stat, p, method = w.statistic, w.p_value, w.method
            rbc = rank_biserial(d)
        else:
            low = high = stat = p = rbc = float("nan")
            method = "not tested (fewer than 2 paired splits)"
        records.append(
            {
                "variant": v,
                "n_paired": n,
                "deltas": d,
                "delta_median": float(d.median()) if n else float("nan"),
                "delta_mean": float(d.mean()) if n else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "statistic": stat,
                "p_raw": p,
                "rbc": rbc,
                "test_method": method,
            }
        )
    columns = [
        "n_paired", "deltas", "delta_median", "delta_mean", "ci_low", "ci_high",
        "statistic", "p_raw", "p_holm", "rbc", "test_method",
    ]
    if not records:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="variant"))
    out = pd.DataFrame.from_records(records).set_index("variant")
    out["p_holm"] = holm(out["p_raw"].astype(float)).to_numpy()
    return out[columns]
