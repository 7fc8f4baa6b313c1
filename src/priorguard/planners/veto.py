"""Veto and scoring rules, composed like optax transformations.

A :class:`VetoRule` is a pair of pure functions over :class:`ActionStats`
(a frozen equinox module whose numeric hyperparameters are array leaves):

* ``veto(stats) -> [B, K] bool``: True where an action is vetoed;
* ``score(stats, score) -> [B, K]``: transforms the running score (which
  starts at ``stats.mean``).

``chain(r1, r2, ...)`` ORs the veto masks and applies the score transforms in
order, exactly like ``optax.chain``. The planners then pick the best-scoring
non-vetoed action (:func:`select_action`); when every action is vetoed they
return the declared fallback action and report that they did.

The epistemic-std threshold can be calibrated by split conformal prediction
(:func:`conformal_threshold`): with scores from n held-out in-distribution
(state, action) pairs, the threshold is the ``ceil((n + 1)(1 - alpha)) / n``
empirical quantile, so a fresh exchangeable pair is vetoed with probability
at most alpha.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from priorguard._compile import shape_bucket
from priorguard.planners.base import ActionStats, PlanningModels, action_stats

__all__ = [
    "Chain",
    "ConformalThreshold",
    "EpistemicStdVeto",
    "LowerConfidenceBound",
    "MaskRule",
    "ValueDropVeto",
    "VetoRule",
    "apply_rule",
    "calibration_scores",
    "chain",
    "conformal_threshold",
    "disarmed",
    "epistemic_std_veto",
    "identity",
    "lower_confidence_bound",
    "make_veto_rule",
    "mask_rule",
    "select_action",
    "value_drop_veto",
]

VetoFn = Callable[[ActionStats], Bool[Array, "B K"]]


class VetoRule(eqx.Module):
    """A veto/scoring rule: a pair of pure functions, like an optax transformation (abstract).

    ``veto(stats) -> [B, K]`` bool mask (True: vetoed) and ``score(stats,
    score[B, K]) -> [B, K]`` (the updated running score). Rules are frozen
    pytrees whose numeric hyperparameters are array leaves, so changing a
    threshold or kappa does not recompile a jitted planner.
    """

    @abc.abstractmethod
    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        """``[B, K]`` True where the action is vetoed."""

    @abc.abstractmethod
    def score(self, stats: ActionStats, score: Float[Array, "B K"]) -> Float[Array, "B K"]:
        """The updated ``[B, K]`` score."""

    def can_veto(self) -> Bool[Array, ""]:
        """Scalar: False only when the rule vetoes no finite-valued action (planners may then skip the
        statistics its vetoes read). Rules that cannot tell answer True."""
        return jnp.asarray(True)

    def disarmed(self) -> VetoRule:
        """This rule with its vetoes switched off and its scoring kept (see :func:`disarmed`)."""
        raise TypeError(f"{type(self).__name__} does not define disarmed(); write one that returns a rule of"
                        " the same pytree structure that vetoes nothing")


def _nothing_vetoed(stats: ActionStats) -> Bool[Array, "B K"]:
    return jnp.zeros(stats.mean.shape, dtype=bool)


class Chain(VetoRule):
    """Rules composed: vetoes OR-ed, score transforms applied in order (``()``: identity)."""

    rules: tuple[VetoRule, ...]

    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        mask = _nothing_vetoed(stats)
        for rule in self.rules:
            mask = mask | rule.veto(stats)
        return mask

    def score(self, stats: ActionStats, score: Float[Array, "B K"]) -> Float[Array, "B K"]:
        for rule in self.rules:
            score = rule.score(stats, score)
        return score

    def can_veto(self) -> Bool[Array, ""]:
        out = jnp.asarray(False)
        for rule in self.rules:
            out = out | rule.can_veto()
        return out

    def disarmed(self) -> VetoRule:
        return Chain(rules=tuple(rule.disarmed() for rule in self.rules))


class EpistemicStdVeto(VetoRule):
    """Vetoes where ``stats.std > threshold``; keeps the score."""

    threshold: Float[Array, ""]

    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        return stats.std > self.threshold

    def score(self, stats: ActionStats, score: Float[Array, "B K"]) -> Float[Array, "B K"]:
        return score

    def can_veto(self) -> Bool[Array, ""]:
        return self.threshold < jnp.inf

    def disarmed(self) -> VetoRule:
        return EpistemicStdVeto(threshold=jnp.full_like(self.threshold, jnp.inf))


class ValueDropVeto(VetoRule):
    """Vetoes where ``stats.mean < stats.current_value - value_drop``; keeps the score."""

    value_drop: Float[Array, ""]

    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        return stats.mean < stats.current_value[..., None] - self.value_drop

    def score(self, stats: ActionStats, score: Float[Array, "B K"]) -> Float[Array, "B K"]:
        return score

    def can_veto(self) -> Bool[Array, ""]:
        return self.value_drop < jnp.inf

    def disarmed(self) -> VetoRule:
        return ValueDropVeto(value_drop=jnp.full_like(self.value_drop, jnp.inf))


class LowerConfidenceBound(VetoRule):
    """Scores ``score - kappa * stats.std``; vetoes nothing."""

    kappa: Float[Array, ""]

    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        return _nothing_vetoed(stats)

    def score(self, stats: ActionStats, score: Float[Array, "B K"]) -> Float[Array, "B K"]:
        return score - self.kappa * stats.std

    def can_veto(self) -> Bool[Array, ""]:
        return jnp.asarray(False)

    def disarmed(self) -> VetoRule:
        return self


class MaskRule(VetoRule):
    """Any pure ``stats -> [B, K]`` mask function as a rule (the function is static)."""

    veto_fn: VetoFn = eqx.field(static=True)

    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        return self.veto_fn(stats)

    def score(self, stats: ActionStats, score: Float[Array, "B K"]) -> Float[Array, "B K"]:
        return score


def identity() -> VetoRule:
    """The rule that vetoes nothing and keeps the score (``stats.mean``).

    Returns:
        A :class:`VetoRule`.
    """
    return Chain(rules=())


def disarmed(rule: VetoRule) -> VetoRule:
    """``rule`` with every veto switched off and its scoring kept: the no-veto ablation.

    Thresholds become ``+inf`` (array leaves of the same shape and dtype), so the
    result has ``rule``'s pytree structure: a planner compiled for ``rule`` runs
    the ablation without compiling again, and its scores are those of ``rule``.
    A :class:`MaskRule` (a static function) cannot be disarmed.

    Args:
        rule: the rule.

    Returns:
        A :class:`VetoRule` that vetoes no finite-valued action.

    Raises:
        TypeError: for a rule that does not define ``disarmed()``.

    Example:
        >>> import jax.numpy as jnp
        >>> from priorguard.planners.base import ActionStats
        >>> stats = ActionStats.from_world_values(
        ...     jnp.array([[[0.0, 2.0], [1.0, 1.0]]]), jnp.array([[1.0, 1.0]]))
        >>> rule = chain(epistemic_std_veto(0.5), lower_confidence_bound(1.0))
        >>> veto, score = apply_rule(disarmed(rule), stats)
        >>> veto.tolist(), score.tolist()
        ([[False, False]], [[0.0, 1.0]])
    """
    return rule.disarmed()


def chain(*rules: VetoRule) -> VetoRule:
    """Composes rules: vetoes are OR-ed, score transforms applied in order.

    Args:
        *rules: the rules to compose.

    Returns:
        A :class:`VetoRule`.

    Example:
        >>> import jax.numpy as jnp
        >>> from priorguard.planners.base import ActionStats
        >>> stats = ActionStats.from_world_values(
        ...     jnp.array([[[0.0, 2.0], [1.0, 1.0]]]), jnp.array([[1.0, 1.0]]))
        >>> rule = chain(epistemic_std_veto(0.5), lower_confidence_bound(1.0))
        >>> veto, score = apply_rule(rule, stats)
        >>> veto.tolist(), score.tolist()
        ([[True, False]], [[0.0, 1.0]])
    """
    return Chain(rules=tuple(rules))


def apply_rule(rule: VetoRule | None, stats: ActionStats) -> tuple[Bool[Array, "B K"], Float[Array, "B K"]]:
    """Runs a rule on statistics.

    Args:
        rule: the rule, or None for :func:`identity`.
        stats: ``[B, K]`` action statistics.

    Returns:
        ``(veto_mask [B, K], score [B, K])``; the score starts at ``stats.mean``.
    """
    rule = identity() if rule is None else rule
    return rule.veto(stats), rule.score(stats, stats.mean)


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
    smallest score. For a fresh pair exchangeable with the calibration pairs,
    ``P(std > threshold) <= alpha``. When ``k > n`` no finite threshold has
    that guarantee and the threshold is ``inf``.

    Args:
        scores: ``[n]`` calibration stds.
        alpha: target false-veto rate, in (0, 1).

    Returns:
        A :class:`ConformalThreshold`.

    Example:
        >>> conformal_threshold(list(range(1, 20)), alpha=0.1).threshold
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
    threshold = float(values[k - 1]) if k <= n else math.inf
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


def epistemic_std_veto(threshold: float | Array | ConformalThreshold) -> VetoRule:
    """Vetoes actions whose epistemic std of T + discount * I exceeds a threshold.

    Args:
        threshold: a number, or a calibrated :class:`ConformalThreshold`.

    Returns:
        A :class:`VetoRule`.
    """
    limit = threshold.threshold if isinstance(threshold, ConformalThreshold) else threshold
    return EpistemicStdVeto(threshold=jnp.asarray(limit))


def value_drop_veto(value_drop: float | Array) -> VetoRule:
    """The failsafe: vetoes actions predicted to lose more than ``value_drop``.

    An action is vetoed when ``mean < current_value - value_drop``, with both
    values averaged over worlds.

    Args:
        value_drop: the largest tolerated predicted drop (>= 0).

    Returns:
        A :class:`VetoRule`.
    """
    if isinstance(value_drop, (int, float)) and value_drop < 0:
        raise ValueError(f"value_drop must be >= 0, got {value_drop}")
    return ValueDropVeto(value_drop=jnp.asarray(value_drop))


def lower_confidence_bound(kappa: float | Array) -> VetoRule:
    """Scoring rule: ``score - kappa * std`` (pessimism under epistemic doubt).

    Args:
        kappa: the number of epistemic standard deviations to subtract.

    Returns:
        A :class:`VetoRule` that vetoes nothing.
    """
    return LowerConfidenceBound(kappa=jnp.asarray(kappa))


def mask_rule(veto_fn: VetoFn) -> VetoRule:
    """Wraps any ``stats -> [B, K]`` mask function as a rule (for custom vetoes).

    Args:
        veto_fn: pure function from :class:`ActionStats` to a bool mask.

    Returns:
        A :class:`VetoRule`.
    """
    return MaskRule(veto_fn=veto_fn)


def make_veto_rule(
    *,
    epistemic_std: float | Literal["auto"] | None = None,
    value_drop: float | None = None,
    kappa: float = 0.0,
    alpha: float = 0.1,
    calibration_stds: Any = None,
) -> tuple[VetoRule, ConformalThreshold | None]:
    """Builds the standard rule chain from configuration values.

    Args:
        epistemic_std: a threshold, ``"auto"`` for split-conformal calibration
            on ``calibration_stds``, or None for no epistemic veto.
        value_drop: failsafe drop, or None for no failsafe.
        kappa: LCB coefficient (0: score by the mean).
        alpha: target in-distribution false-veto rate for ``"auto"``.
        calibration_stds: ``[n]`` scores from :func:`calibration_scores`
            (required for ``"auto"``).

    Returns:
        ``(rule, record)``: the chained rule and the conformal record to store
        with the run (None unless ``epistemic_std == "auto"``).
    """
    rules: list[VetoRule] = []
    record = None
    if epistemic_std == "auto":
        if calibration_stds is None:
            raise ValueError('epistemic_std="auto" needs calibration_stds from held-out train-split states')
        record = conformal_threshold(calibration_stds, alpha=alpha)
        rules.append(epistemic_std_veto(record))
    elif epistemic_std is not None:
        if isinstance(epistemic_std, str):
            raise ValueError(f'epistemic_std must be a number, "auto" or None; got {epistemic_std!r}')
        rules.append(epistemic_std_veto(float(epistemic_std)))
    if value_drop is not None:
        rules.append(value_drop_veto(value_drop))
    if kappa:
        rules.append(lower_confidence_bound(kappa))
    return chain(*rules), record


def select_action(
    score: Float[Array, "B K"], veto_mask: Bool[Array, "B K"]
) -> tuple[Int[Array, " B"], Bool[Array, " B"]]:
    """Best-scoring non-vetoed candidate; -1 and ``used_fallback`` when all are vetoed.

    NaN scores of non-vetoed candidates lose to any finite score.

    Args:
        score: ``[B, K]`` scores.
        veto_mask: ``[B, K]`` True where vetoed.

    Returns:
        ``(candidate_index [B], used_fallback [B])``; ``candidate_index`` is -1
        where every candidate is vetoed.

    Example:
        >>> import jax.numpy as jnp
        >>> idx, fb = select_action(jnp.array([[3.0, 1.0], [0.0, 1.0]]),
        ...                         jnp.array([[True, False], [True, True]]))
        >>> idx.tolist(), fb.tolist()
        ([1, -1], [False, True])
    """
    used_fallback = jnp.all(veto_mask, axis=-1)
    safe_score = jnp.where(jnp.isnan(score), -jnp.inf, score)
    # Vetoed candidates sit strictly below every admissible one, -inf scores included.
    rank = jnp.where(veto_mask, -jnp.inf, safe_score)
    admissible = ~veto_mask
    best = jnp.argmax(jnp.where(admissible, rank, -jnp.inf), axis=-1)
    # argmax of an all -inf row (admissible but -inf scores) is index 0: pick the
    # first admissible candidate instead.
    all_neg_inf = jnp.all(jnp.where(admissible, rank, -jnp.inf) == -jnp.inf, axis=-1)
    first_admissible = jnp.argmax(admissible, axis=-1)
    best = jnp.where(all_neg_inf, first_admissible, best)
    return jnp.where(used_fallback, -1, best).astype(jnp.int32), used_fallback


def fallback_where(used_fallback: Bool[Array, " B"], chosen: Array, fallback_action: Array) -> Array:
    """``fallback_action`` where ``used_fallback`` else ``chosen`` (any trailing shape)."""
    fallback = jnp.broadcast_to(jnp.asarray(fallback_action, dtype=chosen.dtype), chosen.shape)
    mask = used_fallback.reshape(used_fallback.shape + (1,) * (chosen.ndim - used_fallback.ndim))
    return jnp.where(mask, fallback, chosen)


jax.tree_util.register_static(ConformalThreshold)
