"""Did in-distribution evidence rank the priors as deployment did? ``az.compare`` per seed.

For every experiment and seed of a result store, the fitted ``<role>.nc`` of each sweep
point goes to ``az.compare`` (PSIS-LOO over the posterior draws; a MAP GP's file holds its
Laplace draws), and each point's LOO rank sits beside its deploy regret, its rank by
regret, the leave-one-state-out elpd (exact GPs) and the role's OOD AUROC on the fixed probe
set. Whether LOO picked the prior that did best on deploy is the question the project
exists to ask: the train split cannot show what the deploy split does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from priorguard.analysis.labels import point_label

__all__ = ["CompareRow", "compare_store", "plot_compare", "verdicts"]


@dataclasses.dataclass(frozen=True)
class CompareRow:
    """One sweep point at one seed."""

    experiment: str
    seed: int
    point: str
    run_id: str
    loo_rank: int | None
    elpd_loo: float
    se: float
    elpd_diff: float
    dse: float
    weight: float
    elpd_loso: float
    regret: float
    regret_rank: int | None
    ood_auroc: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(self).items()}


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _ranks(values: dict[str, float]) -> dict[str, int]:
    finite = sorted((v, k) for k, v in values.items() if not math.isnan(v))
    return {k: i for i, (_, k) in enumerate(finite)}


def compare_store(store_dir: Path, *, role: str = "terminal",
                  read: Callable[[Path], Any] | None = None) -> list[CompareRow]:
    """The rows of ``priorguard compare`` (done runs only; seeds with one point are skipped).

    ``read`` loads a run's DataTree (:func:`~priorguard.analysis.diagnostics.read_datatree`
    by default; the report passes one that it shares with its LOO columns).
    """
    import arviz as az

    from priorguard.store import ResultStore

    if read is None:
        from priorguard.analysis.diagnostics import read_datatree as read

    store = ResultStore(store_dir)
    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for rec in store.records(status="done"):
        groups[(rec.experiment, rec.seed)].append(rec)
    rows: list[CompareRow] = []
    for (experiment, seed), recs in sorted(groups.items()):
        if len({json.dumps(r.overrides, sort_keys=True) for r in recs}) < 2:
            continue
        trees, loso = {}, {}
        for rec in recs:
            path = store.run_dir(rec.run_id) / f"{role}.nc"
            if path.is_file():
                dt = read(path)
                if "log_likelihood" in dt.children:
                    trees[point_label(rec.overrides)] = dt
                loso[point_label(rec.overrides)] = _num(dt.attrs.get("elpd_loso"))
        table = None
        if len(trees) >= 2:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    table = az.compare(trees)
            except Exception:  # noqa: BLE001 - a file ArviZ cannot score: its row shows n/a
                table = None
        regret = {point_label(r.overrides): _num((r.metrics or {}).get("regret")) for r in recs}
        regret_rank = _ranks(regret)
        for rec in recs:
            label, m = point_label(rec.overrides), rec.metrics or {}
            got = table is not None and label in table.index
            cell = (lambda col: float(table.loc[label, col])) if got else (lambda col: math.nan)  # noqa: E731
            rows.append(CompareRow(experiment, seed, label, rec.run_id, int(table.loc[label, "rank"]) if got else None,
                                   cell("elpd"), cell("se"), cell("elpd_diff"), cell("dse"), cell("weight"),
                                   loso.get(label, math.nan), regret[label], regret_rank.get(label),
                                   _num(m.get(f"{role}_ood_auroc"))))
    return rows


def verdicts(rows: list[CompareRow], names: dict[str, str] | None = None) -> list[str]:
    """Per (experiment, seed): did the point LOO ranked first also have the least deploy regret?

    ``names``: a short name per point label (e.g. ``p0``); the label itself by default.
    """
    name = (lambda p: names.get(p, p)) if names else (lambda p: p)  # noqa: E731
    out = []
    by_seed: dict[tuple[str, int], list[CompareRow]] = defaultdict(list)
    for r in rows:
        by_seed[(r.experiment, r.seed)].append(r)
    for (experiment, seed), rs in by_seed.items():
        top = [r for r in rs if r.loo_rank == 0]
        least = min((r.regret for r in rs if not math.isnan(r.regret)), default=math.nan)
        best = [r for r in rs if r.regret == least]
        if not top or not best:
            out.append(f"{experiment} seed {seed}: n/a (no LOO ranking, or no deploy regret)")
            continue
        same = top[0].point in [b.point for b in best]
        tied = f" (tied with {len(best) - 1} more)" if len(best) > 1 else ""
        out.append(f"{experiment} seed {seed}: LOO ranks first {name(top[0].point)} (elpd {top[0].elpd_loo:.1f});"
                   f" least deploy regret: {name(best[0].point if not same else top[0].point)} ({least:.3f}){tied}"
                   f" -> {'the same prior' if same else 'NOT the same prior'}")
    return out


def plot_compare(rows: list[CompareRow], path: Path) -> Path:
    """elpd-LOO (with its se) against deploy regret, one marker per point and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for point in sorted({r.point for r in rows}):
        rs = [r for r in rows if r.point == point]
        ax.errorbar([r.elpd_loo for r in rs], [r.regret for r in rs], xerr=[r.se for r in rs], fmt="o",
                    capsize=3, label=point[:60])
    ax.set_xlabel("in-distribution elpd-LOO (az.compare; higher is better)")
    ax.set_ylabel("deploy regret (lower is better)")
    ax.set_title("Did in-distribution evidence rank the priors as deployment did?", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
