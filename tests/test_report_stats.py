"""Statistics of ablation rows against the baseline, checked against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest

from drx.errors import DataError
from drx.report import stats as st


# ------------------------------------------------------------------------------ wilcoxon_exact


def test_wilcoxon_all_positive_n10_is_one_over_512():
    # All 10 signs positive: only 1 of the 2^10 sign patterns is as extreme in each tail.
    r = st.wilcoxon_exact(np.arange(1, 11) * 0.001)
    assert r.p_value == pytest.approx(1 / 512, abs=0) and r.p_value == 0.001953125
    assert (r.statistic, r.n, r.n_nonzero, r.method) == (0.0, 10, 10, "exact")
    assert st.wilcoxon_exact(-np.arange(1, 11) * 0.001).p_value == 0.001953125


def test_wilcoxon_mixed_signs_by_hand():
    # n=6, ranks 1..6, only rank 1 negative: T- = 1; P(T- <= 1) = |{∅, {1}}| / 64, doubled.
    r = st.wilcoxon_exact([-0.001, 0.002, 0.003, 0.004, 0.005, 0.006])
    assert r.statistic == 1.0
    assert r.p_value == pytest.approx(4 / 64)
    # n=5, rank 5 negative: T- = 5; subsets of {1..5} with sum <= 5 are
    # ∅,1,2,3,4,5,12,13,14,23 = 10 of 32, doubled -> 20/32.
    r = st.wilcoxon_exact([0.01, 0.02, 0.03, 0.04, -0.05])
    assert r.statistic == 5.0
    assert r.p_value == pytest.approx(20 / 32)
    assert r.method == "exact"


def test_wilcoxon_drops_zeros_and_stays_exact():
    r = st.wilcoxon_exact([0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006])
    assert (r.n, r.n_nonzero, r.method) == (7, 6, "exact")
    assert r.p_value == pytest.approx(2 / 64)


def test_wilcoxon_ties_use_enumerated_permutation():
    # |Δ| ranks 1.5, 1.5, 3, 4, 5, 6 with one 1.5 negative: r_minus <= 1.5 in 3 of 64 flips.
    r = st.wilcoxon_exact([0.001, -0.001, 0.002, 0.003, 0.004, 0.005])
    assert r.method == "exact permutation (ties)"
    assert r.statistic == 1.5
    assert r.p_value == pytest.approx(6 / 64)


def test_wilcoxon_float_noise_becomes_a_tie():
    a = 0.7 - 0.6
    b = 0.4 - 0.3
    assert a != b  # float noise: equal on paper, different bits
    noisy = st.wilcoxon_exact([a, -b, 0.2, 0.3, 0.4, 0.5])
    clean = st.wilcoxon_exact([0.1, -0.1, 0.2, 0.3, 0.4, 0.5])
    assert noisy.method == clean.method == "exact permutation (ties)"
    assert noisy.p_value == clean.p_value == pytest.approx(6 / 64)


def test_wilcoxon_degenerate_inputs():
    r = st.wilcoxon_exact([])
    assert math.isnan(r.p_value) and r.n == 0 and r.method == "no data"
    r = st.wilcoxon_exact([np.nan, np.inf])
    assert math.isnan(r.p_value) and r.n == 0
    r = st.wilcoxon_exact([0.0, 0.0, 0.0])
    assert (r.p_value, r.n, r.n_nonzero) == (1.0, 3, 0)


def test_min_attainable_p_and_small_n_rule():
    assert st.min_attainable_p(5) == 0.0625
    assert st.min_attainable_p(6) == 0.03125
    assert st.min_attainable_p(10) == 0.001953125
    assert math.isnan(st.min_attainable_p(0))
    assert not st.can_reach(5) and st.can_reach(st.SMALL_N)
    assert st.SMALL_N == 6
    # The floor is what the exact test gives for unanimous signs.
    for n in range(1, 12):
        assert st.wilcoxon_exact(np.arange(1, n + 1) / 100).p_value == pytest.approx(
            st.min_attainable_p(n)
        )


# ------------------------------------------------------------------------------------- holm


def test_holm_known_vector():
    np.testing.assert_allclose(st.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_holm_nan_passthrough_and_not_in_family():
    out = st.holm([0.01, np.nan, 0.04, 0.03])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], [0.03, 0.06, 0.06])
    assert np.isnan(st.holm([np.nan, np.nan])).all()
    s = st.holm(pd.Series([0.02, 0.5], index=["a", "b"], name="p"))
    assert list(s.index) == ["a", "b"] and s.name == "p"
    np.testing.assert_allclose(s.to_numpy(), [0.04, 0.5])


# -------------------------------------------------------------------------------- effect size


def test_rank_biserial():
    assert st.rank_biserial([0.01, 0.02, 0.03]) == 1.0
    assert st.rank_biserial([-0.01, -0.02]) == -1.0
    # ranks 1..5, rank 5 negative: (10 - 5) / 15
    assert st.rank_biserial([0.01, 0.02, 0.03, 0.04, -0.05]) == pytest.approx(1 / 3)
    assert st.rank_biserial([0.0, 0.0]) == 0.0
    assert math.isnan(st.rank_biserial([]))


# -------------------------------------------------------------------------------- bootstrap


DELTAS = np.array([-0.012, -0.008, -0.009, -0.003, -0.011, -0.006, 0.002, -0.007, -0.010, -0.005])


def test_bootstrap_contains_median_and_is_seeded():
    med = np.median(DELTAS)
    a = st.bootstrap_median_ci(DELTAS, n_resamples=999, seed=0)
    b = st.bootstrap_median_ci(DELTAS, n_resamples=999, seed=0)
    c = st.bootstrap_median_ci(DELTAS, n_resamples=999, seed=1)
    assert a == b
    assert a != c
    assert a[0] <= med <= a[1] and c[0] <= med <= c[1]
    assert DELTAS.min() <= a[0] < a[1] <= DELTAS.max()
    # A wider confidence level gives an interval at least as wide.
    w = st.bootstrap_median_ci(DELTAS, confidence=0.99, n_resamples=999, seed=0)
    assert w[0] <= a[0] and w[1] >= a[1]


def test_bootstrap_contains_median_on_many_samples():
    rng = np.random.default_rng(7)
    for n in (2, 3, 5, 10):
        for _ in range(5):
            d = rng.standard_t(2, size=n)
            lo, hi = st.bootstrap_median_ci(d, n_resamples=199, seed=3)
            assert lo <= np.median(d) <= hi


def test_bootstrap_degenerate_cases():
    assert all(math.isnan(x) for x in st.bootstrap_median_ci([0.01]))
    assert all(math.isnan(x) for x in st.bootstrap_median_ci([]))
    assert st.bootstrap_median_ci([0.004] * 6) == (0.004, 0.004)


# ---------------------------------------------------------------------------- paired deltas


def test_paired_deltas_keeps_shared_finite_splits():
    v = pd.Series([0.90, 0.91, np.nan, 0.93], index=[0, 1, 2, 3])
    r = pd.Series([0.92, 0.90, 0.90, np.nan, 0.95], index=[1, 0, 2, 3, 4])
    d = st.paired_deltas(v, r)
    assert list(d.index) == [0, 1]
    np.testing.assert_allclose(d.to_numpy(), [0.90 - 0.90, 0.91 - 0.92])


def test_paired_deltas_rejects_duplicate_splits():
    with pytest.raises(DataError, match="split"):
        st.paired_deltas(pd.Series([0.9, 0.8], index=[0, 0]), pd.Series([0.9], index=[0]))


# ----------------------------------------------------------------------- compare_to_baseline


def _frame():
    rows = []
    for s in range(10):
        ref = 0.90 + 0.002 * s
        rows.append(dict(variant="full", benchmark="koniq", split=s, status="ok", srcc=ref))
        # always worse by 0.010..0.019: every sign negative
        rows.append(dict(variant="a", benchmark="koniq", split=s, status="ok", srcc=ref - 0.010 - 0.001 * s))
        # mixed: ±, not a consistent effect
        rows.append(dict(variant="b", benchmark="koniq", split=s, status="ok",
                         srcc=ref + (0.001 * (s + 1) if s % 2 else -0.001 * (s + 1))))
        # one usable split only
        ok = s == 0
        rows.append(dict(variant="c", benchmark="koniq", split=s, status="ok" if ok else "failed",
                         srcc=ref if ok else np.nan))
        # another benchmark must not leak into this column
        rows.append(dict(variant="a", benchmark="spaq", split=s, status="ok", srcc=0.5))
    return pd.DataFrame(rows)


def test_compare_to_baseline_column():
    out = st.compare_to_baseline(_frame(), "full", "srcc", "koniq", ["full", "a", "b", "c"],
                                  n_resamples=999)
    assert list(out.index) == ["a", "b", "c"]
    a = out.loc["a"]
    assert a["n_paired"] == 10
    assert a["delta_median"] == pytest.approx(-0.0145)
    assert a["p_raw"] == 0.001953125
    assert a["rbc"] == -1.0
    assert a["ci_low"] <= a["delta_median"] <= a["ci_high"] < 0
    np.testing.assert_allclose(a["deltas"].to_numpy(), -0.010 - 0.001 * np.arange(10))
    b = out.loc["b"]
    # +2,-1,+4,-3,... (x0.001): positives 2,4,6,8,10 (sum 30), negatives 1,3,5,7,9 (sum 25)
    assert b["statistic"] == 25.0
    assert b["rbc"] == pytest.approx((30 - 25) / 55)
    c = out.loc["c"]
    assert c["n_paired"] == 1 and math.isnan(c["p_raw"]) and math.isnan(c["ci_low"])
    # Holm family = tested rows of this column only (c is untested and not counted).
    np.testing.assert_allclose(
        out.loc[["a", "b"], "p_holm"].to_numpy(),
        st.holm(out.loc[["a", "b"], "p_raw"].to_numpy()),
    )
    assert out.loc["a", "p_holm"] == pytest.approx(2 / 512)
    assert math.isnan(c["p_holm"])


def test_compare_to_baseline_restricts_splits_and_rejects_duplicates():
    out = st.compare_to_baseline(_frame(), "full", "srcc", "koniq", ["full", "a"],
                                  splits=range(5), n_resamples=99)
    assert out.loc["a", "n_paired"] == 5
    assert out.loc["a", "p_raw"] == pytest.approx(st.min_attainable_p(5))
    dup = pd.concat([_frame(), _frame().iloc[:1]])
    with pytest.raises(DataError, match="several rows"):
        st.compare_to_baseline(dup, "full", "srcc", "koniq")
    with pytest.raises(DataError, match="plcc"):
        st.compare_to_baseline(_frame(), "full", "plcc", "koniq")
