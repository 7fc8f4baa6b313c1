"""Veto and scoring rules, composed like optax transformations, and a registry to build them by name.

A :class:`VetoRule` is a frozen equinox module over :class:`ActionStats` whose
numeric hyperparameters are array leaves. It has one required method and one
optional one:

* ``veto(stats) -> [B, K] bool``: True where an action is vetoed;
* ``score(stats, score) -> [B, K]``: transforms the running score (which
  starts at ``stats.mean``); by default it keeps it.

``chain(r1, r2, ...)`` ORs the veto masks and applies the score transforms in
order, exactly like ``optax.chain``. The planners then pick the best-scoring
non-vetoed action (:func:`select_action`); when every action is vetoed they
return the declared fallback action and report that they did.

Rules are built from configuration by name (:func:`make_veto_rule`): every rule,
the built-in ``"epistemic_std"``, ``"value_drop"`` and ``"lcb"`` included, is
registered with :func:`register_veto_rule`, so a module outside the package adds
a rule by registering its factory. The epistemic-std threshold can be calibrated
by split conformal prediction (:mod:`priorguard.planners.conformal`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from priorguard.planners.base import ActionStats
from priorguard.planners.conformal import ConformalThreshold, conformal_threshold

__all__ = [
    "Chain",
    "EpistemicStdVeto",
    "LowerConfidenceBound",
    "MaskRule",
    "ValueDropVeto",
    "VetoRule",
    "VetoRuleFactory",
    "apply_rule",
    "chain",
    "disarmed",
    "epistemic_std_veto",
    "fallback_where",
    "identity",
    "lower_confidence_bound",
    "make_veto_rule",
    "mask_rule",
    "register_veto_rule",
    "select_action",
    "value_drop_veto",
    "veto_rule_names",
]

VetoFn = Callable[[ActionStats], Bool[Array, "B K"]]


class VetoRule(eqx.Module):
    """A veto/scoring rule: a pair of pure functions, like an optax transformation (abstract).

    ``veto(stats) -> [B, K]`` bool mask (True: vetoed) is the one required
    method; ``score(stats, score[B, K]) -> [B, K]`` (the updated running score)
    keeps the score unless a rule overrides it. Rules are frozen pytrees whose
    numeric hyperparameters are array leaves, so changing a threshold or kappa
    does not recompile a jitted planner. A rule that should take part in the
    no-veto ablation also defines ``disarmed()``.
    """

    @abc.abstractmethod
    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        """``[B, K]`` True where the action is vetoed."""

    def score(self, stats: ActionStats, score: Float[Array, "B K"]) -> Float[Array, "B K"]:
        """The updated ``[B, K]`` score (by default ``score`` unchanged)."""
        return score

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

    def can_veto(self) -> Bool[Array, ""]:
        return self.threshold < jnp.inf

    def disarmed(self) -> VetoRule:
        return EpistemicStdVeto(threshold=jnp.full_like(self.threshold, jnp.inf))


class ValueDropVeto(VetoRule):
    """Vetoes where ``stats.mean < stats.current_value - value_drop``; keeps the score."""

    value_drop: Float[Array, ""]

    def veto(self, stats: ActionStats) -> Bool[Array, "B K"]:
        return stats.mean < stats.current_value[..., None] - self.value_drop

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

#: Builds a rule from its configuration: ``factory(**params) -> VetoRule``. A factory registered
#: with ``calibrated=True`` also takes ``calibration_stds=`` and returns ``(rule, ConformalThreshold | None)``.
VetoRuleFactory = Callable[..., Any]

#: name -> (factory, calibrated), filled by :func:`register_veto_rule`.
_VETO_RULES: dict[str, tuple[VetoRuleFactory, bool]] = {}


def register_veto_rule(name: str, factory: VetoRuleFactory | None = None, *, calibrated: bool = False) -> Any:
    """Registers a veto rule under ``name``, so that :func:`make_veto_rule` builds it from its configuration.

    Use it as a call, ``register_veto_rule(name, factory)``, or as a decorator,
    ``@register_veto_rule(name)``; both return the factory. The factory is called
    with the rule's parameters as keywords and returns a :class:`VetoRule`
    (define ``disarmed()`` on it for the no-veto ablation). Registering another
    factory under a taken name is an error; registering the same one again is not.

    Args:
        name: the rule's name in configurations.
        factory: ``factory(**params) -> VetoRule``; None to get a decorator.
        calibrated: the factory also takes ``calibration_stds=`` (the scores from
            :func:`priorguard.planners.conformal.calibration_scores`, or None) and
            returns ``(rule, ConformalThreshold | None)``.

    Returns:
        ``factory``, or a decorator that registers one.

    Example:
        >>> import jax.numpy as jnp
        >>> @register_veto_rule("doc_negative_mean")
        ... def negative_mean():
        ...     return mask_rule(lambda stats: stats.mean < 0)
        >>> rule, _ = make_veto_rule(rules=[("doc_negative_mean", {})])
        >>> stats = ActionStats.from_world_values(jnp.array([[[-1.0], [1.0]]]), jnp.array([[0.0]]))
        >>> rule.veto(stats).tolist()
        [[True, False]]
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a veto rule's name must be a non-empty string, got {name!r}")

    def register(fn: VetoRuleFactory) -> VetoRuleFactory:
        if _VETO_RULES.get(name, (fn, calibrated)) != (fn, calibrated):
            raise ValueError(f"a different veto rule is already registered as {name!r}")
        _VETO_RULES[name] = (fn, calibrated)
        return fn

    return register if factory is None else register(factory)


def veto_rule_names() -> tuple[str, ...]:
    """The registered veto rules' names, sorted."""
    return tuple(sorted(_VETO_RULES))


def _build_rule(name: str, params: Mapping[str, Any], calibration_stds: Any) -> tuple[VetoRule, Any]:
    """One registered rule from its parameters: ``(rule, conformal record or None)``."""
    if name not in _VETO_RULES:
        raise ValueError(f"unknown veto rule {name!r}; registered: {', '.join(veto_rule_names())}")
    factory, calibrated = _VETO_RULES[name]
    if calibrated:
        rule, record = factory(**params, calibration_stds=calibration_stds)
    else:
        rule, record = factory(**params), None
    if not isinstance(rule, VetoRule):
        raise TypeError(f"veto rule {name!r}: the factory returned {type(rule).__name__}, not a VetoRule")
    return rule, record


def _epistemic_std_rule(*, threshold: float | Literal["auto"], alpha: float = 0.1,
                        calibration_stds: Any = None) -> tuple[VetoRule, ConformalThreshold | None]:
    """The ``"epistemic_std"`` rule: a fixed threshold, or ``"auto"`` calibrated by split conformal."""
    if threshold == "auto":
        if calibration_stds is None:
            raise ValueError('epistemic_std="auto" needs calibration_stds from held-out train-split states')
        record = conformal_threshold(calibration_stds, alpha=alpha)
        return epistemic_std_veto(record), record
    if isinstance(threshold, str):
        raise ValueError(f'epistemic_std must be a number, "auto" or None; got {threshold!r}')
    return epistemic_std_veto(float(threshold)), None


register_veto_rule("epistemic_std", _epistemic_std_rule, calibrated=True)
register_veto_rule("value_drop", value_drop_veto)
register_veto_rule("lcb", lower_confidence_bound)


def make_veto_rule(
    *,
    epistemic_std: float | Literal["auto"] | None = None,
    value_drop: float | None = None,
    kappa: float = 0.0,
    alpha: float = 0.1,
    calibration_stds: Any = None,
    rules: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> tuple[VetoRule, ConformalThreshold | None]:
    """Builds the rule chain from configuration values, every rule through the registry.

    The built-in values become ``("epistemic_std", {"threshold": epistemic_std,
    "alpha": alpha})``, ``("value_drop", {"value_drop": value_drop})`` and
    ``("lcb", {"kappa": kappa})`` (each only when set), in that order; ``rules``
    follow them. Vetoes are OR-ed; score transforms apply in that order.

    Args:
        epistemic_std: a threshold, ``"auto"`` for split-conformal calibration
            on ``calibration_stds``, or None for no epistemic veto.
        value_drop: failsafe drop, or None for no failsafe.
        kappa: LCB coefficient (0: score by the mean).
        alpha: target in-distribution false-veto rate for ``"auto"``.
        calibration_stds: ``[n]`` scores from
            :func:`priorguard.planners.conformal.calibration_scores` (required for ``"auto"``).
        rules: further ``(name, params)`` pairs of rules given to :func:`register_veto_rule`.

    Returns:
        ``(rule, record)``: the chained rule and the conformal record to store
        with the run (None unless a rule calibrated itself, e.g. ``epistemic_std == "auto"``).

    Raises:
        ValueError: for an unknown rule name, or more than one calibrated record.
    """
    entries: list[tuple[str, Mapping[str, Any]]] = []
    if epistemic_std is not None:
        entries.append(("epistemic_std", {"threshold": epistemic_std, "alpha": alpha}))
    if value_drop is not None:
        entries.append(("value_drop", {"value_drop": value_drop}))
    if kappa:
        entries.append(("lcb", {"kappa": kappa}))
    entries.extend(rules)
    built: list[VetoRule] = []
    record = None
    for name, params in entries:
        rule, rule_record = _build_rule(name, params, calibration_stds)
        if rule_record is not None:
            if record is not None:
                raise ValueError("make_veto_rule: more than one rule returned a conformal record")
            record = rule_record
        built.append(rule)
    return chain(*built), record



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

