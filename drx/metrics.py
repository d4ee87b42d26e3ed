"""IQA metrics with scipy: SRCC, PLCC (raw and after the VQEG 4-parameter logistic), KRCC, RMSE.

Degenerate predictions (constant, or too few images) give NaN, never a made-up 0: the reference
code's habit of setting all metrics to 0 on an exception hides failures.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats

#: Every metric a trial reports, in table order; ``val_<m>`` and ``test_<m>`` columns derive from these.
METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")

#: Display names (the field's standard abbreviations).
METRIC_LABELS = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)", "krcc": "KRCC", "rmse": "RMSE", "mae": "MAE"}

#: Whether a larger value is better (correlations) or worse (errors, on the MOS scale).
HIGHER_IS_BETTER = {"srcc": True, "plcc": True, "plcc_logistic": True, "krcc": True, "rmse": False, "mae": False}


def metric_label(metric: str) -> str:
    """Display name of a metric key (``"srcc"`` -> ``"SRCC"``); an unknown key is upper-cased."""
    return METRIC_LABELS.get(metric, str(metric).upper())


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG's monotonic 4-parameter logistic: (b1 − b2) / (1 + exp(−(x − b3)/|b4|)) + b2."""
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -60.0, 60.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def _logistic4_jacobian(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    # Analytic derivatives: scipy's finite differences are relative to each parameter, so a
    # parameter starting near 0 (the centre b3 of centred predictions) would never move.
    scale = abs(b4) + 1e-12
    z = np.clip(-(x - b3) / scale, -60.0, 60.0)
    s = 1.0 / (1.0 + np.exp(z))
    ds = -s * (1.0 - s) * (b1 - b2)  # d f / d z
    return np.stack([s, 1.0 - s, ds / scale, ds * (x - b3) / scale**2 * np.sign(b4 or 1.0)], axis=1)


def fit_logistic(pred: np.ndarray, mos: np.ndarray) -> np.ndarray | None:
    """Predictions mapped through the fitted logistic (None when the fit does not converge)."""
    p0 = [float(mos.max()), float(mos.min()), float(np.mean(pred)), float(np.std(pred)) or 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(logistic4, pred, mos, p0=p0, jac=_logistic4_jacobian, maxfev=20000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    fitted = logistic4(pred, *params)
    return fitted if np.all(np.isfinite(fitted)) else None


def iqa_metrics(pred: np.ndarray, mos: np.ndarray) -> dict[str, float]:
    """pred, mos [N] on the MOS scale -> {srcc, plcc, plcc_logistic, krcc, rmse}."""
    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if pred.shape != mos.shape:
        raise ValueError(f"predictions {pred.shape} and MOS {mos.shape} differ in shape")
    out = {k: float("nan") for k in METRICS}
    if len(pred) == 0 or not np.all(np.isfinite(pred)):
        return out
    out["rmse"] = float(np.sqrt(np.mean((pred - mos) ** 2)))
    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(mos) == 0:
        return out
    out["srcc"] = float(stats.spearmanr(pred, mos).statistic)
    out["plcc"] = float(stats.pearsonr(pred, mos).statistic)
    out["krcc"] = float(stats.kendalltau(pred, mos).statistic)
    fitted = fit_logistic(pred, mos)
    if fitted is not None and np.ptp(fitted) > 0:
        out["plcc_logistic"] = float(stats.pearsonr(fitted, mos).statistic)
    return out
