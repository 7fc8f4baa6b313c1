"""Split-conformal calibration of the epistemic-std veto threshold.

With scores from n held-out in-distribution (state, action) pairs
(:func:`calibration_scores`), the threshold is the ``ceil((n + 1)(1 - alpha)) / n``
empirical quantile (:func:`conformal_threshold`), so a fresh exchangeable pair is
vetoed with probability at most alpha. The built-in ``"epistemic_std"`` veto rule
(:func:`priorguard.planners.veto.epistemic_std_veto`) takes the result.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import shape_bucket
from priorguard.planners.worlds import PlanningModels, action_stats

__all__ = ["TIE_MARGIN", "ConformalThreshold", "calibration_scores", "conformal_threshold"]

#: Relative margin above the k-th calibration score: scores that tie with it (the same state
#: scored again) stay unvetoed however the planner's floating point rounds them.
TIE_MARGIN = 1e-9


@dataclasses.dataclass(frozen=True)
class ConformalThreshold:
    """A split-conformal epistemic-std threshold, stored with the run.

    Attributes:
        threshold: veto when the epistemic std exceeds this (``inf`` when n is
            too small for the requested alpha: then nothing is vetoed).
        alpha: the target false-veto rate in distribution.
        n: number of calibration scores.
    """

    threshold: float
    alpha: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-serialisable record (``inf`` becomes the string ``"inf"``)."""
        threshold: float | str = self.threshold if math.isfinite(self.threshold) else "inf"
        return {"threshold": threshold, "alpha": self.alpha, "n": self.n}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ConformalThreshold:
        """Inverse of :meth:`to_dict`."""
        return cls(threshold=float(record["threshold"]), alpha=float(record["alpha"]), n=int(record["n"]))


def conformal_threshold(scores: Any, *, alpha: float) -> ConformalThreshold:
    """Split-conformal threshold for the epistemic-std veto (host side, outside jit).

    With n calibration scores (epistemic stds of held-out train-split
    (state, action) pairs) the threshold is the ``k = ceil((n + 1)(1 - alpha))``-th
    smallest score (plus :data:`TIE_MARGIN`, relative, so scores tied with it stay unvetoed). For a fresh pair exchangeable with the calibration pairs,
    ``P(std > threshold) <= alpha``. When ``k > n`` no finite threshold has
    that guarantee and the threshold is ``inf``.

    Args:
        scores: ``[n]`` calibration stds.
        alpha: target false-veto rate, in (0, 1).

    Returns:
        A :class:`ConformalThreshold`.

    Example:
        >>> round(conformal_threshold(list(range(1, 20)), alpha=0.1).threshold, 6)
        18.0
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if not np.all(np.isfinite(values)):
        raise ValueError("calibration scores must be finite")
    n = values.size
    if n == 0:
        raise ValueError("conformal calibration needs at least one score")
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    # A score equal to the threshold is not vetoed. Where a state recurs (a grid cell) many
    # scores tie with the k-th, and a planner's own arithmetic (another batch shape) can put
    # them an ulp above it: then all of them are vetoed. TIE_MARGIN keeps ties on the safe side.
    threshold = float(values[k - 1]) + TIE_MARGIN * max(1.0, abs(float(values[k - 1]))) if k <= n else math.inf
    return ConformalThreshold(threshold=threshold, alpha=float(alpha), n=int(n))


def calibration_scores(
    models: PlanningModels,
    key: PRNGKeyArray,
    obs: Float[Array, "N Ds"],
    *,
    discount: float,
    actions: Array | None = None,
    proposal: Any = None,
    proposal_params: Any = None,
) -> Float[Array, " N"]:
    """Epistemic stds of one action per held-out state, for conformal calibration.

    Use one action per state (the behaviour action from the train split, or one
    draw from A) so the n scores are exchangeable with a fresh in-distribution
    (state, action) pair.

    Args:
        models: the planning models.
        key: consumed; used only when actions are drawn from ``proposal``.
        obs: ``[N, Ds]`` held-out train-split observations.
        discount: weight of I in ``T + discount * I``.
        actions: ``[N]`` or ``[N, Da]`` actions taken there, or None to draw one
            from ``proposal``.
        proposal: a proposal with ``sample(params, key, obs, k)``.
        proposal_params: its parameters.

    Returns:
        ``[N]`` epistemic std of ``T + discount * I`` after each action.
    """
    if actions is None and proposal is None:
        raise ValueError("calibration_scores needs actions or a proposal to draw them from")
    # Pad N up to a shape bucket (8 per octave) so calibration sets of nearby sizes
    # share one compiled program; the padded rows are dropped.
    n = obs.shape[0]
    size = shape_bucket(n, direction="up")
    rows = jnp.arange(size) % n
    padded = None if actions is None else jnp.asarray(actions)[rows]
    return _calibration_scores(models, key, jnp.asarray(obs)[rows], discount, padded, proposal, proposal_params)[:n]


@eqx.filter_jit
def _calibration_scores(models: PlanningModels, key: PRNGKeyArray, obs: Array, discount: float, actions: Any,
                        proposal: Any, proposal_params: Any) -> Array:
    if actions is None:
        actions = proposal.sample(proposal_params, key, obs, 1)[:, 0]
    return action_stats(models, obs, actions[:, None], discount=discount).std[:, 0]


jax.tree_util.register_static(ConformalThreshold)
