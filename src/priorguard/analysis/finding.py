"""The report's opening: what was run, and what it found, per seed.

A reader of a sweep wants the answer before the tables: which prior generalised
(lowest deploy regret), on how many seeds it beat the others, whether the planner
turned it into better actions than the proposal policy A alone, and whether the
veto kept its promise. Every figure here is a run's own metric; nothing is fitted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from priorguard.metrics import NO_CATASTROPHES

ARMS = ("checked_regret", "regret", "no_veto_regret")


def has_catastrophes(metrics: dict[str, Any]) -> bool:
    """Whether the run's environment has catastrophic states (runs say so in ``veto_precision_na``)."""
    return not str(metrics.get("veto_precision_na") or "").endswith(NO_CATASTROPHES)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _seeds(values: dict[int, float]) -> str:
    return " / ".join("n/a" if not math.isfinite(v) else f"{v:.2f}" for _, v in sorted(values.items()))


def _best_arm(m: dict[str, Any]) -> float:
    found = [v for v in (_num(m.get(k)) for k in ARMS) if math.isfinite(v)]
    return min(found) if found else math.nan


def findings(records: list[Any], label: Any, version: str) -> list[str]:
    """Sentences that open the report: provenance, then per experiment the prior that
    generalised, the planner against A alone, and the veto's promise, each per seed.

    Args:
        records: the store's finished runs (``ResultStore.records(status="done")``).
        label: sweep-point label of a run's overrides.
        version: priorguard's version, printed with the provenance.
    """
    by_exp: dict[str, list[Any]] = defaultdict(list)
    for rec in records:
        by_exp[rec.experiment].append(rec)
    out = []
    for exp, recs in sorted(by_exp.items()):
        seeds = sorted({r.seed for r in recs})
        points: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for r in recs:
            points[label(r.overrides)][r.seed] = r.metrics or {}
        out.append(f"{exp} on {recs[0].env}: {len(recs)} run(s), {len(points)} sweep point(s) x seeds "
                   f"{', '.join(map(str, seeds))}; priorguard {version}. Per-seed figures are given in seed order.")
        regret = {p: {s: _num(m.get("regret")) for s, m in runs.items()} for p, runs in points.items()}
        mean = {p: _mean(v) for p, v in regret.items()}
        ranked = sorted((p for p in points if math.isfinite(mean[p])), key=lambda p: mean[p])
        if len(ranked) >= 2:
            best, worst = ranked[0], ranked[-1]
            both = sorted(set(regret[best]) & set(regret[worst]))
            wins = sum(regret[best][s] < regret[worst][s] for s in both)
            ties = sum(regret[best][s] == regret[worst][s] for s in both)
            if ties == len(both):
                out.append(f"Deploy regret is the same at every sweep point on every seed ({_seeds(regret[best])}):"
                           " the priors swept here do not change what the agent achieved.")
            else:
                text = (f"Lowest deploy regret: {best} ({_seeds(regret[best])}); highest: {worst} "
                        f"({_seeds(regret[worst])}). The first is lower on {wins} of {len(both)} seed(s)")
                out.append(text + (f", tied on {ties}." if ties else "."))
        elif ranked:
            out.append(f"Deploy regret of {ranked[0]}: {_seeds(regret[ranked[0]])}.")
        for p in ranked[:1]:
            ratio = {s: _best_arm(m) / _num(m.get("proposal_alone_regret")) if _num(
                m.get("proposal_alone_regret")) > 0 else math.nan for s, m in points[p].items()}
            if any(math.isfinite(v) for v in ratio.values()):
                better = sum(v < 1 for v in ratio.values() if math.isfinite(v))
                out.append(f"At {p}, the best planner arm's regret over A alone's: {_seeds(ratio)} "
                           f"(below 1, where the planner acted better than A, on {better} of {len(ratio)} seed(s)).")
        promise = [(_num(m.get("train_false_veto_rate")), _num(m.get("train_false_veto_bound")))
                   for runs in points.values() for m in runs.values()]
        promise = [(r, b) for r, b in promise if math.isfinite(r) and math.isfinite(b)]
        if promise:
            held = sum(r <= b for r, b in promise)
            out.append(f"The veto's promise (train-split false vetoes within alpha's 95% bound) held on {held} of "
                       f"{len(promise)} run(s).")
        if not any(has_catastrophes(m) for runs in points.values() for m in runs.values()):
            out.append(f"{recs[0].env} has no catastrophic states: catastrophe rates and veto precision are not "
                       "reported.")
    return out


def _mean(values: dict[int, float]) -> float:
    finite = [v for v in values.values() if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
