"""ArviZ-based diagnostics and the calibration metrics every experiment reports.

Intervals are stated explicitly everywhere: ArviZ 1.x defaults to 89% ETIs,
priorguard reports 90% equal-tailed intervals unless told otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Interval probability used in summaries (explicit; ArviZ 1.x defaults to 0.89).
CI_PROB = 0.9
CI_KIND = "eti"

DIVERGENCE_WARNING = "There were {n} divergences after tuning. Increase `target_accept` or reparameterize."
RHAT_WARNING = ("The rhat statistic is larger than 1.01 for some parameters. "
                "This indicates problems during sampling.")
ESS_WARNING = "The effective sample size per chain is smaller than 100 for some parameters."


@dataclass(frozen=True)
class Diagnostics:
    """Sampling diagnostics of a posterior DataTree (NaN where they do not apply)."""

    rhat_max: float
    ess_bulk_min: float
    ess_tail_min: float
    divergences: int
    chains: int
    draws: int
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(dt: Any, *, var_names: list[str] | None = None, warn: bool = True) -> Diagnostics:
    """R-hat, bulk/tail ESS and divergences, with PyMC's warnings when they are bad.

    Args:
        dt: an ``xarray.DataTree`` with a ``posterior`` group (``chain``, ``draw`` dims)
            and optionally ``sample_stats.diverging``.
        var_names: variables to check (default: all in ``posterior``).
        warn: also emit the messages as ``UserWarning``.

    Returns:
        :class:`Diagnostics`. R-hat needs >= 2 chains and ESS >= 4 draws; otherwise NaN.
    """
    import arviz as az

    post = dt["posterior"].to_dataset()
    names = var_names or [v for v in post.data_vars]
    chains, draws = int(post.sizes.get("chain", 1)), int(post.sizes.get("draw", 1))
    rhat_max = ess_bulk = ess_tail = float("nan")
    if names and draws >= 4:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sub = dt.copy()
            sub["posterior"] = dt["posterior"].to_dataset()[names]
            ess_b = az.ess(sub, method="bulk")
            ess_t = az.ess(sub, method="tail")
            ess_bulk = _min_over(ess_b)
            ess_tail = _min_over(ess_t)
            if chains >= 2:
                rhat_max = _max_over(az.rhat(sub))
    divergences = 0
    if "sample_stats" in dt.children and "diverging" in dt["sample_stats"].to_dataset():
        divergences = int(np.asarray(dt["sample_stats"]["diverging"]).sum())
    messages = []
    if divergences:
        messages.append(DIVERGENCE_WARNING.format(n=divergences))
    if np.isfinite(rhat_max) and rhat_max > 1.01:
        messages.append(RHAT_WARNING)
    if np.isfinite(ess_bulk) and chains > 0 and min(ess_bulk, ess_tail) / chains < 100:
        messages.append(ESS_WARNING)
    if warn:
        for m in messages:
            warnings.warn(m, UserWarning, stacklevel=2)
    return Diagnostics(rhat_max, ess_bulk, ess_tail, divergences, chains, draws, messages)


def _values(obj: Any) -> list[np.ndarray]:
    ds = obj.to_dataset() if hasattr(obj, "to_dataset") else obj
    if hasattr(obj, "children") and "posterior" in getattr(obj, "children", {}):
        ds = obj["posterior"].to_dataset()
    return [np.asarray(ds[v]).ravel() for v in ds.data_vars]


def _min_over(obj: Any) -> float:
    vals = [v[np.isfinite(v)] for v in _values(obj)]
    vals = [v for v in vals if v.size]
    return float(min(v.min() for v in vals)) if vals else float("nan")


def _max_over(obj: Any) -> float:
    vals = [v[np.isfinite(v)] for v in _values(obj)]
    vals = [v for v in vals if v.size]
    return float(max(v.max() for v in vals)) if vals else float("nan")


def summary(dt: Any, *, var_names: list[str] | None = None, ci_prob: float = CI_PROB) -> Any:
    """``az.summary`` with the interval set explicitly (90% ETI by default)."""
    import arviz as az

    return az.summary(dt, var_names=var_names, ci_prob=ci_prob, ci_kind=CI_KIND)


def interval_coverage(y: Any, mean: Any, var: Any, *, level: float) -> float:
    """Fraction of ``y`` inside the central ``level`` Gaussian predictive interval.

    Args:
        y, mean, var: ``[N]`` or ``[N, O]`` observations, predictive means and variances.
        level: e.g. 0.5 or 0.9.

    Returns:
        Coverage in [0, 1] (NaN for no points).

    Example:
        >>> interval_coverage([0.0, 3.0], [0.0, 0.0], [1.0, 1.0], level=0.9)
        0.5
    """
    from scipy.stats import norm

    y, mean, var = (np.asarray(a, dtype=float) for a in (y, mean, var))
    if y.size == 0:
        return float("nan")
    half = norm.ppf(0.5 + level / 2.0) * np.sqrt(np.maximum(var, 0.0))
    return float(np.mean(np.abs(y - mean) <= half))


def auroc(positive: Any, negative: Any, *, rtol: float = 1e-9) -> float:
    """Area under the ROC curve of a score separating positives from negatives.

    Computed as the Mann-Whitney probability P(score_pos > score_neg) with ties
    counted one half. Used with epistemic std as the score, deploy-only states as
    positives and train states as negatives. Scores closer than ``rtol`` times the
    largest magnitude are ties: two states a GP is equally sure of get stds that differ
    by rounding error (a variance is a difference of nearly equal numbers), and which
    one rounding puts first says nothing about the model.

    Example:
        >>> auroc([2.0, 3.0], [1.0, 2.0])
        0.875
        >>> auroc([1.0 + 1e-13], [1.0])  # equal up to rounding: a tie
        0.5
    """
    from scipy.stats import rankdata

    pos, neg = np.asarray(positive, float).ravel(), np.asarray(negative, float).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    if not np.all(np.isfinite(scores)):
        return float("nan")
    order = np.argsort(scores, kind="stable")
    tol = rtol * float(np.max(np.abs(scores)))
    level = np.empty(scores.size)  # runs of sorted scores with gaps within tol share a level
    level[order] = np.concatenate([[0], np.cumsum(np.diff(scores[order]) > tol)])
    ranks = rankdata(level)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def write_datatree(dt: Any, path: str | Path) -> None:
    """Writes a DataTree to netCDF (netCDF4 engine)."""
    dt.to_netcdf(str(path), engine="netcdf4")


def read_datatree(path: str | Path) -> Any:
    """Reads a DataTree written by :func:`write_datatree` (loaded into memory)."""
    import xarray as xr

    with xr.open_datatree(str(path), engine="netcdf4") as dt:
        return dt.load()
