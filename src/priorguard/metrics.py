"""The metric registry: every metric a run writes that a table shows, with its label and range.

The runner writes metrics by these names; the CLI's results table and the report read
this registry (which rows, in which order, with which labels, and whether a value lies in
[0, 1]) instead of lists of their own. Metrics an environment adds through its outcome
flags (``EnvInfo.outcome_flags``, e.g. vault's tampering) are registered from the flags
with :func:`register_outcomes`; a user may add their own with :func:`register_metric`.

Example:
    >>> metric("regret").label
    'regret'
    >>> is_unit_metric("veto_rate"), is_unit_metric("regret")
    (True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The ways a run plays the deploy split, as metric-name prefixes: the planner searching
#: with A as its prior, with its vetoes and without them, A checked (A's draw unless the
#: veto refuses it), A alone, and the env's oracle.
ARMS: tuple[tuple[str, str], ...] = (("", "planner"), ("no_veto_", "no veto"), ("checked_", "A checked"),
                                     ("proposal_alone_", "A alone"), ("oracle_", "oracle"))


#: How a run says its environment has no catastrophic states (the end of ``veto_precision_na``).
NO_CATASTROPHES = "has no catastrophic states"

@dataclass(frozen=True)
class Metric:
    """One metric a run reports.

    Attributes:
        name: the key in ``metrics.json``.
        label: a short label for tables and plots.
        unit: the value lies in [0, 1] (rates, fractions, coverages, AUROC): intervals are cut there.
        views: where it is a row: ``"cli"`` (the results table of ``run`` / ``sweep``) and
            ``"report"`` (the report's table).
        optional: shown only where some run measured it (e.g. I's coverage without an I).
    """

    name: str
    label: str
    unit: bool = False
    views: tuple[str, ...] = ()
    optional: bool = False


_REGISTRY: dict[str, Metric] = {}


def register_metric(m: Metric) -> Metric:
    """Adds (or replaces) a metric; tables list registered metrics in the order they were added."""
    _REGISTRY[m.name] = m
    return m


def metric(name: str) -> Metric:
    """The registered metric ``name``, or one labelled by its name (range guessed from it) if none is."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    return Metric(name, name.replace("_", " "), unit="coverage" in name or name.endswith(_UNIT_ENDINGS))


#: Endings of names whose values lie in [0, 1], for metrics no one registered.
_UNIT_ENDINGS = ("_rate", "_fraction", "_precision", "_recall", "_auroc")


def is_unit_metric(name: str) -> bool:
    """Whether metric ``name`` lies in [0, 1] (a rate, fraction, coverage, precision, recall or AUROC)."""
    return metric(name).unit


def table_metrics(view: str, runs: Iterable[Mapping[str, Any]] = ()) -> list[Metric]:
    """The rows of a table (``view``: "cli" or "report"), in order; an optional row only where some
    run in ``runs`` (metric mappings) has a value for it."""
    runs = list(runs)
    return [m for m in _REGISTRY.values() if view in m.views
            and (not m.optional or any(r.get(m.name) is not None for r in runs))]


#: Outcome name (the flag's metric without "_rate") -> (label, the metric names of the arms but the oracle).
_OUTCOMES: dict[str, tuple[str, tuple[str, ...]]] = {}


def outcome_groups() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Registered outcomes: name -> (label, metric names for the planner, no veto, A alone)."""
    return dict(_OUTCOMES)


def register_outcomes(flags: Iterable[Any]) -> list[Metric]:
    """Registers the metrics of an environment's outcome flags (``EnvInfo.outcome_flags``).

    Each flag gives ``<arm><flag.metric>`` for every arm of :data:`ARMS` (the fraction of
    deploy episodes in which the flag was ever set); a flag that ``hides_truth`` also gives
    ``<arm>rater_gap`` (the rater's return minus the true return).

    Returns:
        The metrics registered.
    """
    out = []
    for flag in flags:
        for prefix, arm in ARMS:
            views = ("cli", "report") if prefix != "oracle_" else ()
            out.append(register_metric(Metric(f"{prefix}{flag.metric}", f"{flag.label} ({arm})" if prefix
                                              else flag.label, unit=True, views=views, optional=True)))
        _OUTCOMES[flag.metric.removesuffix("_rate")] = (
            flag.label, tuple(f"{prefix}{flag.metric}" for prefix, _ in ARMS if prefix != "oracle_"))
        if flag.hides_truth:
            for prefix, arm in ARMS:
                out.append(register_metric(Metric(f"{prefix}rater_gap", f"rater gap ({arm})" if prefix else "rater gap",
                                                  views=("cli", "report") if not prefix else (), optional=True)))
    return out


_BOTH = ("cli", "report")
for _m in (
    Metric("deploy_return", "deploy return", views=("cli",)),
    Metric("oracle_return", "oracle return", views=("cli",)),
    Metric("regret", "regret", views=_BOTH),
    Metric("regret_in_range", "regret, starts in T's train range", views=_BOTH),
    Metric("regret_out_of_range", "regret, starts outside", views=_BOTH),
    Metric("catastrophe_rate", "catastrophes", unit=True, views=_BOTH),
    Metric("no_veto_catastrophe_rate", "catastrophes (no veto)", unit=True, views=_BOTH),
    Metric("checked_regret", "A checked regret", views=_BOTH, optional=True),
    Metric("proposal_alone_regret", "A alone regret", views=_BOTH),
    Metric("veto_rate", "veto rate", unit=True, views=_BOTH),
    Metric("veto_precision", "veto precision", unit=True, views=_BOTH),
    Metric("veto_recall", "veto recall", unit=True, views=_BOTH),
    Metric("train_false_veto_rate", "false vetoes (train)", unit=True, views=_BOTH),
    Metric("train_false_veto_bound", "false-veto bound (alpha + 95% margin)", unit=True, views=_BOTH, optional=True),
    Metric("veto_loop_rate", "episodes with a veto loop", unit=True, views=_BOTH),
    Metric("abstain_rate", "episodes that asked for help", unit=True, views=_BOTH),
    Metric("veto_benign_rate", "harmless candidates vetoed (deploy)", unit=True, views=_BOTH),
    Metric("terminal_coverage90_train", "T cov90 train", unit=True, views=_BOTH),
    Metric("terminal_coverage90_deploy", "T cov90 deploy", unit=True, views=_BOTH),
    Metric("terminal_epistemic_auroc", "AUROC (visited states)", unit=True, views=_BOTH),
    Metric("terminal_ood_auroc", "T OOD AUROC (probe set)", unit=True, views=_BOTH),
    Metric("instrumental_ood_auroc", "I OOD AUROC (probe set)", unit=True, views=_BOTH, optional=True),
    Metric("instrumental_coverage90_train", "I cov90 train", unit=True, views=_BOTH, optional=True),
    Metric("instrumental_coverage90_deploy", "I cov90 deploy", unit=True, views=_BOTH, optional=True),
    Metric("train_regret", "regret (train split)", views=_BOTH, optional=True),
    Metric("train_return", "return (train split)"),
    Metric("train_oracle_return", "oracle return (train split)", optional=True),
    Metric("train_catastrophe_rate", "catastrophes (train split)", unit=True),
    Metric("no_veto_return", "return (no veto)"),
    Metric("proposal_alone_return", "return (A alone)"),
    Metric("checked_return", "return (A checked)"),
    Metric("checked_catastrophe_rate", "catastrophes (A checked)", unit=True),
    Metric("checked_veto_rate", "veto rate (A checked)", unit=True),
    Metric("no_veto_regret", "regret (no veto)"),
    Metric("deploy_in_range_fraction", "deploy starts in T's train range", unit=True),
    Metric("fallback_rate", "fallbacks", unit=True),
    Metric("veto_threshold", "calibrated epistemic-std threshold"),
    Metric("value_drop_threshold", "calibrated failsafe: the largest tolerated predicted drop"),
    Metric("veto_calibration_n", "veto calibration scores"),
    Metric("veto_calibration_needed", "calibration scores a finite threshold needs"),
    Metric("veto_loops", "veto loops (deploy)"),
    Metric("terminal_ood_probes", "T's deploy-only probe states"),
    Metric("terminal_ood_reference", "T's held-out train reference states"),
    Metric("audit_alone_rate", "audit: A alone's misalignment rate", unit=True),
    Metric("audit_alone_upper", "audit: A alone's upper bound", unit=True),
    Metric("audit_planner_rate", "audit: the planner's misalignment rate", unit=True),
    Metric("audit_planner_upper", "audit: the planner's upper bound", unit=True),
    Metric("adversarial_min_value", "adversarial search: lowest predicted value"),
):
    register_metric(_m)
