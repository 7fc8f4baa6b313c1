"""Reports over a result store: how prior choice moves out-of-distribution goal generalisation.

``build_report(store_dir, out_dir)`` writes ``index.md`` and a self-contained
``index.html`` (PNG plots embedded) with, per sweep point (a prior choice),
mean and interval over seeds (their range below 5 seeds, else 90% Student-t) of regret (all deploy episodes, and those
starting inside / outside the range of T's training inputs) and catastrophe rate; veto rate
and catastrophes against the calibrated threshold; coverage on train vs
deploy; AUROC of epistemic uncertainty; diagnostics; in-distribution
cross-validation of T (leave one observation out, and leave one state out)
beside deploy regret (does it rank priors the way deployment does?);
and the outcomes an environment declares (e.g. tampering with the rater's view), where runs measured them.
Rows, labels and ranges come from the metric registry (:mod:`priorguard.metrics`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorguard import __version__
from priorguard.analysis.finding import findings, has_catastrophes
from priorguard.analysis.labels import point_label
from priorguard.metrics import is_unit_metric, metric, outcome_groups, table_metrics
from priorguard.store import ResultStore

LEVEL = 0.9
#: Fewest seeds for a Student-t interval; fewer show their range (min, max).
MIN_T_SEEDS = 5


@dataclass
class PointSummary:
    """Runs of one experiment at one sweep point, summarised over seeds."""

    experiment: str
    label: str
    seeds: list[int]
    metrics: dict[str, list[float]]
    loo: list[float]
    loso: list[float] = dataclasses.field(default_factory=list)

    def stat(self, key: str) -> tuple[float, float, float]:
        """Mean and interval over seeds (NaNs dropped; see :func:`mean_interval`), rates cut to [0, 1]."""
        return mean_interval(self.metrics.get(key, []), bounds=(0.0, 1.0) if is_unit_metric(key) else None)


def mean_interval(values: list[float], level: float = LEVEL,
                  bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Mean and an interval over seeds: Student-t from ``MIN_T_SEEDS`` seeds, else their range.

    Over 2 to 4 seeds a t-interval says little but its width (over 2 seeds its half-width
    is 6.3 standard errors: a fraction's interval ran from -2.66 to 3.66); the seeds' own
    minimum and maximum say what was measured. One seed's interval is its value.
    ``bounds`` cut a t-interval to a metric's range.

    Example:
        >>> mean_interval([1.0, 2.0, 3.0])
        (2.0, 1.0, 3.0)
        >>> m, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
        >>> round(m, 3), round(lo, 3), round(hi, 3)
        (3.0, 1.493, 4.507)
        >>> mean_interval([0.0, 1.0, 1.0, 1.0, 1.0], bounds=(0.0, 1.0))[2]
        1.0
    """
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if v.size < MIN_T_SEEDS:
        return m, float(v.min()), float(v.max())
    half = float(t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return m, lo, hi


def _terminal_loo(run_dir: Path, read: Callable[[Path], Any]) -> tuple[float, float]:
    """T's in-distribution ``(elpd-LOO, elpd-LOSO)`` from ``terminal.nc``; NaN where missing."""
    nan = float("nan")
    path = run_dir / "terminal.nc"
    if not path.exists():
        return nan, nan
    try:
        import arviz as az

        dt = read(path)
    except Exception:  # a file ArviZ cannot read: reported as missing
        return nan, nan
    loso = float(dt.attrs.get("elpd_loso", nan))  # exact GPs: leave one state out
    if "elpd_loo_exact" in dt.attrs:  # MAP GPs: exact at the MAP point (az.loo on its Laplace draws is close)
        return float(dt.attrs["elpd_loo_exact"]), loso
    if "log_likelihood" not in dt.children:
        return nan, loso
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(az.loo(dt).elpd), loso
    except Exception:  # a posterior ArviZ cannot score: reported as missing
        return nan, loso


def summarise(store: ResultStore, *, read: Callable[[Path], Any] | None = None) -> list[PointSummary]:
    """Done runs grouped by (experiment, sweep point); ``read`` loads a run's DataTree
    (:func:`~priorguard.analysis.diagnostics.read_datatree` by default)."""
    if read is None:
        from priorguard.analysis.diagnostics import read_datatree as read
    groups: dict[tuple[str, str], PointSummary] = {}
    for rec in store.records(status="done"):
        key = (rec.experiment, json.dumps(rec.overrides, sort_keys=True))
        point = groups.setdefault(key, PointSummary(rec.experiment, point_label(rec.overrides), [],
                                                    defaultdict(list), []))
        point.seeds.append(rec.seed)
        for k, v in (rec.metrics or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                point.metrics[k].append(float(v))
            elif v is None:
                point.metrics[k].append(float("nan"))
        loo, loso = _terminal_loo(store.run_dir(rec.run_id), read)
        point.loo.append(loo)
        point.loso.append(loso)
    return list(groups.values())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(points: list[PointSummary], keys: list[tuple[str, str]], title: str, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 0.45 * len(points) + 1.8), squeeze=False)
    labels = [f"{p.experiment}: {p.label}" for p in points]
    for ax, (key, name) in zip(axes[0], keys):
        stats = [p.stat(key) for p in points]
        means = [s[0] for s in stats]
        err = np.array([[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]])
        ax.barh(range(len(points)), means, xerr=np.maximum(np.nan_to_num(err), 0.0), color="tab:blue", alpha=0.7, capsize=3)
        ax.set_yticks(range(len(points)), labels if ax is axes[0][0] else [""] * len(points), fontsize=7)
        ax.set_xlabel(name)
    fig.suptitle(f"{title} (mean; bars: range over seeds below {MIN_T_SEEDS}, else 90% t-interval)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")  # long sweep-point labels stay on the canvas
    plt.close(fig)


def _scatter(points: list[PointSummary], xkey: str, ykey: str, xlabel: str, ylabel: str, title: str,
             path: Path, *, x_values: list[list[float]] | None = None) -> None:
    """Per-seed points; x from metric ``xkey``, or ``x_values`` (one list per point)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for j, p in enumerate(points):
        xs = x_values[j] if x_values is not None else p.metrics.get(xkey, [])
        ys = p.metrics.get(ykey, [])
        n = min(len(xs), len(ys))
        ax.scatter(xs[:n], ys[:n], label=f"{p.experiment}: {p.label}", s=18)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if points:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


DIAG_KEYS = ["terminal_rhat_max", "terminal_ess_bulk_min", "terminal_divergences", "world_rhat_max",
             "world_ess_bulk_min", "world_divergences", "fit_terminal_s", "fit_world_s", "plan_deploy_s"]


def _fmt(m: float, lo: float, hi: float) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.3g}" if lo == hi else f"{m:.3g} [{lo:.3g}, {hi:.3g}]"


def build_report(store_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes ``index.md`` and ``index.html`` with plots into ``out_dir``; returns the HTML path.

    Raises:
        ValueError: the store has no finished runs.
    """
    from priorguard.analysis.diagnostics import read_datatree

    store = ResultStore(store_dir)
    read = functools.cache(read_datatree)  # the LOO columns and az.compare read each terminal.nc once
    points = summarise(store, read=read)
    if not points:
        raise ValueError(f"{store_dir} has no finished runs to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "generalisation.png": "Prior choice vs out-of-distribution goal generalisation",
        "veto.png": "Vetoes",
        "coverage.png": "Calibration of T (and I): 90% interval coverage, train vs deploy",
        "auroc.png": "Epistemic uncertainty: AUROC for deploy vs train states",
        "veto_threshold.png": "Catastrophes vs the calibrated veto threshold",
        "loo_vs_deploy.png": "In-distribution cross-validation of T vs deploy regret",
    }
    cv_name, cv = _cv(points)
    done = store.records(status="done")
    catastrophes = any(has_catastrophes(r.metrics or {}) for r in done)
    # the rows of the metric registry's report view; optional ones where some run measured them
    measured = [{k: (v or None) for k, v in p.metrics.items()} for p in points]
    table_keys = [(m.name, m.label) for m in table_metrics("report", measured)
                  if catastrophes or not any(w in m.name for w in ("catastrophe", "veto_precision", "veto_recall"))]
    for name, (label, keys) in outcome_groups().items():  # outcomes the environments declare
        if any(p.metrics.get(keys[0]) for p in points):
            plots[f"{name}.png"] = f"{label}: the fraction of deploy episodes where it happened"
            _bars(points, [(k, metric(k).label) for k in keys], label, out / f"{name}.png")
    _bars(points, [("regret", "regret (fraction of best)"),
                   ("regret_in_range", "regret, starts inside T's train range"),
                   ("regret_out_of_range", "regret, starts outside it"),
                   *[("catastrophe_rate", "catastrophe rate")] * catastrophes],
          "Goal generalisation on the deploy split", out / "generalisation.png")
    _bars(points, [("veto_rate", "veto rate"), *[("no_veto_catastrophe_rate", "catastrophes without veto"),
                   ("catastrophe_rate", "catastrophes with veto")] * catastrophes], "Vetoes", out / "veto.png")
    coverage = [("terminal_coverage90_train", "T 90% coverage, train"),
                ("terminal_coverage90_deploy", "T 90% coverage, deploy")]
    if any(p.metrics.get("instrumental_coverage90_train") for p in points):
        coverage += [("instrumental_coverage90_train", "I 90% coverage, train"),
                     ("instrumental_coverage90_deploy", "I 90% coverage, deploy")]
    _bars(points, coverage, "Coverage", out / "coverage.png")
    _bars(points, [("terminal_epistemic_auroc", "AUROC")], "Epistemic AUROC", out / "auroc.png")
    if catastrophes:
        _scatter(points, "veto_threshold", "catastrophe_rate", "calibrated epistemic-std threshold",
                 "catastrophe rate", plots["veto_threshold.png"], out / "veto_threshold.png")
    else:  # nothing to plot against
        del plots["veto_threshold.png"]
    _scatter(points, "", "regret", f"elpd-{cv_name} of T (train split)", "deploy regret", plots["loo_vs_deploy.png"],
             out / "loo_vs_deploy.png", x_values=cv)

    head = ["experiment", "sweep point", "seeds", *(name for _, name in table_keys), "T elpd-LOO", "T elpd-LOSO"]
    rows = []
    for p in points:
        rows.append([p.experiment, p.label, str(len(p.seeds)), *(_fmt(*p.stat(k)) for k, _ in table_keys),
                     _fmt(*mean_interval(p.loo)), _fmt(*mean_interval(p.loso))])
    loo_rank, deploy_rank = _ranks(points, cv)
    veto_head, veto_rows = _veto_promise(store)
    arms_head, arms_rows = _arms_per_seed(store)
    diag_head = ["experiment", "sweep point", *DIAG_KEYS]
    diag_rows = [[p.experiment, p.label, *(_fmt(*p.stat(k)) for k in DIAG_KEYS)] for p in points]

    found = findings(done, point_label, __version__)
    damaged = {r.run_id: store.damaged_files(r.run_id) for r in done}
    found += [f"Run {run_id}'s files changed since it was written ({', '.join(files)}): its figures here are the "
              "index's, from when it finished; the next `priorguard sweep` into this store makes it again."
              for run_id, files in damaged.items() if files]
    run_links = _run_plot_links(store, out)
    per_seed = _compare_verdicts(store, read)
    md = [f"# priorguard report: {store_dir}", "", "## Finding", "", *(f"- {f}" for f in found), "",
          f"{sum(len(p.seeds) for p in points)} finished run(s) in {len(points)} sweep point(s). "
          "Intervals: [min, max] over seeds below 5 seeds, else 90% Student-t intervals.", "", "## Metrics", "",
          _md_table(head, rows), "", "## Does in-distribution cross-validation rank priors the way deployment does?",
          "", CV_NOTE, "", _rank_sentence(points, loo_rank, deploy_rank, cv, cv_name), "",
          *([COMPARE_NOTE, "", *(f"- {v}" for v in per_seed), ""] if per_seed else []),
          "## The three arms, per run", "", ARMS_NOTE, "", _md_table(arms_head, arms_rows), "",
          "## The veto's promise, per run", "", VETO_NOTE, "", _md_table(veto_head, veto_rows), "",
          "## Diagnostics", "", _md_table(diag_head, diag_rows), ""]
    if run_links:
        md += ["## Each run's plots", "", *(f"- {title}: " + ", ".join(f"[{n}]({h})" for n, h in links)
                                            for title, links in run_links), ""]
    for name, title in plots.items():
        md += [f"## {title}", "", f"![{title}]({name})", ""]
    (out / "index.md").write_text("\n".join(md), encoding="utf-8")

    body = [f"<h1>priorguard report: {html.escape(str(store_dir))}</h1>", "<h2>Finding</h2>",
            "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in found) + "</ul>",
            f"<p>{sum(len(p.seeds) for p in points)} finished run(s) in {len(points)} sweep point(s). "
            "Intervals: [min, max] over seeds below 5 seeds, else 90% Student-t intervals.</p>", "<h2>Metrics</h2>",
            _html_table(head, rows),
            "<h2>Does in-distribution cross-validation rank priors the way deployment does?</h2>",
            f"<p>{html.escape(CV_NOTE)}</p>",
            f"<p>{html.escape(_rank_sentence(points, loo_rank, deploy_rank, cv, cv_name))}</p>",
            *([f"<p>{html.escape(COMPARE_NOTE)}</p>",
               "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in per_seed) + "</ul>"] if per_seed else []),
            "<h2>The three arms, per run</h2>", f"<p>{html.escape(ARMS_NOTE)}</p>",
            _html_table(arms_head, arms_rows),
            "<h2>The veto's promise, per run</h2>", f"<p>{html.escape(VETO_NOTE)}</p>",
            _html_table(veto_head, veto_rows),
            "<h2>Diagnostics</h2>", _html_table(diag_head, diag_rows)]
    if run_links:
        body += ["<h2>Each run's plots</h2>", "<ul>" + "".join(
            f"<li>{html.escape(title)}: " + ", ".join(f'<a href="{html.escape(h)}">{html.escape(n)}</a>'
                                                      for n, h in links) + "</li>"
            for title, links in run_links) + "</ul>"]
    for name, title in plots.items():
        data = base64.b64encode((out / name).read_bytes()).decode()
        body += [f"<h2>{html.escape(title)}</h2>", f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">']
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>priorguard report</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


VETO_NOTE = ("The calibrated veto promises that on the train split at most alpha of the planner's own decisions "
             "are refused (docs/priors.md, 'What the calibrated veto guarantees'). Each run's false-veto rate "
             "is shown against its bound (alpha plus a binomial 95% margin for its number of decisions); "
             "'held' says whether the rate is within it. Loops count decisions refused again at a state the "
             "episode had been refused at before.")


ARMS_NOTE = ("Deploy regret (1 - return / the oracle's return) of each way the run acts: A alone (the proposal "
             "policy), A checked (A's draw unless the veto refuses it; no search), and the planner searching with A "
             "as its prior, with its veto and without it. 'best / A alone' is the best of the two planner arms "
             "and A checked over A alone: below 1, T and W turned into better actions than A's.")


def _arms_per_seed(store: ResultStore) -> tuple[list[str], list[list[str]]]:
    """One row per finished run: the deploy regret of each arm, and the best over A alone's."""
    head = ["experiment", "sweep point", "seed", "A alone", "A checked", "planner", "planner (no veto)",
            "best / A alone"]
    rows = []
    for rec in sorted(store.records(status="done"), key=lambda r: (r.experiment, point_label(r.overrides), r.seed)):
        m = rec.metrics or {}
        alone = m.get("proposal_alone_regret")
        arms = [m.get(k) for k in ("checked_regret", "regret", "no_veto_regret")]
        found = [a for a in arms if a is not None and math.isfinite(a)]
        ratio = (min(found) / alone if found and alone is not None and math.isfinite(alone) and alone > 0
                 else None)
        rows.append([rec.experiment, point_label(rec.overrides), str(rec.seed), _fmt_one(alone),
                     *(_fmt_one(a) for a in arms), _fmt_one(ratio)])
    return head, rows


def _veto_promise(store: ResultStore) -> tuple[list[str], list[list[str]]]:
    """One row per finished run with a calibrated veto: false-veto rate, bound, whether it held."""
    head = ["experiment", "sweep point", "seed", "false vetoes (train)", "bound", "held", "veto rate (deploy)",
            "veto loops", "T OOD AUROC"]
    rows = []
    for rec in sorted(store.records(status="done"), key=lambda r: (r.experiment, point_label(r.overrides), r.seed)):
        m = rec.metrics or {}
        rate, bound = m.get("train_false_veto_rate"), m.get("train_false_veto_bound")
        if rate is None or bound is None:
            continue
        held = "yes" if rate <= bound else "**no**"
        rows.append([rec.experiment, point_label(rec.overrides), str(rec.seed), f"{rate:.3f}", f"{bound:.3f}", held,
                     _fmt_one(m.get("veto_rate")), _fmt_one(m.get("veto_loops")),
                     _fmt_one(m.get("terminal_ood_auroc"))])
    return head, rows


COMPARE_NOTE = ("Per seed, az.compare (PSIS-LOO over each run's terminal.nc draws; `priorguard compare STORE` "
                "prints the whole table): did the prior LOO ranked first also have the least deploy regret?")


def _compare_verdicts(store: ResultStore, read: Callable[[Path], Any]) -> list[str]:
    """``priorguard compare``'s per-seed verdicts on T, with the report's point labels."""
    from priorguard.analysis.compare import compare_store, verdicts

    try:
        rows = compare_store(store.root, read=read)
    except (OSError, ValueError) as exc:  # a run file ArviZ cannot read: the section says so
        return [f"az.compare could not run on this store: {exc}"]
    return verdicts([r for r in rows if r.loo_rank is not None])


def _run_plot_links(store: ResultStore, out: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per finished run with plots in its folder: a title and (plot name, path relative to ``out``)."""
    found = []
    for rec in sorted(store.records(status="done"), key=lambda r: (r.experiment, point_label(r.overrides), r.seed)):
        folder = store.run_dir(rec.run_id)
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if pngs:
            title = f"{rec.experiment}, {point_label(rec.overrides)}, seed {rec.seed} ({rec.run_id})"
            found.append((title, [(p.stem, Path(os.path.relpath(p.resolve(), out.resolve())).as_posix())
                                  for p in pngs]))
    return found


def _fmt_one(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


CV_NOTE = ("elpd-LOO leaves out one observation; elpd-LOSO leaves out every observation of one state and scores "
           "T's prediction of that state's average label from the others (exact GPs). Data gathered by acting "
           "visit the same states many times, so LOO keeps a held-out label's copies and measures little beyond "
           "the fit; LOSO asks how T generalises to a state it has not seen. Priors are ranked by LOSO where "
           "every scored run has it, else by LOO.")


def _cv(points: list[PointSummary]) -> tuple[str, list[list[float]]]:
    """The cross-validation score that ranks the points: LOSO where every run with a LOO has one."""
    has_loo = [math.isfinite(v) for p in points for v in p.loo]
    has_loso = [math.isfinite(v) for p in points for v in p.loso]
    if any(has_loso) and all(b for a, b in zip(has_loo, has_loso) if a):
        return "LOSO", [p.loso for p in points]
    return "LOO", [p.loo for p in points]


def _ranks(points: list[PointSummary], cv: list[list[float]]) -> tuple[list[int], list[int]]:
    loo = [mean_interval(v)[0] for v in cv]
    regret = [p.stat("regret")[0] for p in points]
    order_loo = sorted(range(len(points)), key=lambda i: -loo[i] if math.isfinite(loo[i]) else math.inf)
    order_dep = sorted(range(len(points)), key=lambda i: regret[i] if math.isfinite(regret[i]) else math.inf)
    return order_loo, order_dep


def _rank_sentence(points: list[PointSummary], loo_rank: list[int], deploy_rank: list[int],
                   cv: list[list[float]], name: str) -> str:
    if len(points) < 2:
        return "One sweep point: nothing to rank."
    from scipy.stats import spearmanr

    loo = [mean_interval(v)[0] for v in cv]
    regret = [p.stat("regret")[0] for p in points]
    ok = [i for i in range(len(points)) if math.isfinite(loo[i]) and math.isfinite(regret[i])]
    best_dep = f"{points[deploy_rank[0]].experiment}: {points[deploy_rank[0]].label}"
    tied = [points[i] for i in deploy_rank[1:] if regret[i] == regret[deploy_rank[0]]]
    if tied:
        best_dep += " (tied with " + ", ".join(f"{p.experiment}: {p.label}" for p in tied) + ")"
    if not any(math.isfinite(v) for v in loo):
        return (f"No run has an in-distribution LOO of T (no terminal.nc ArviZ can score), so LOO ranks"
                f" nothing. Best on deploy (lowest regret): {best_dep}.")
    finite_values = [v for v in loo if math.isfinite(v)]
    if len(finite_values) >= 2 and max(finite_values) - min(finite_values) <= 1e-9 * max(1.0, abs(finite_values[0])):
        return (f"T's {name} is the same at every sweep point (the sweep does not change T's prior or data),"
                f" so it ranks nothing. Best on deploy (lowest regret): {best_dep}.")
    best_loo = f"{points[loo_rank[0]].experiment}: {points[loo_rank[0]].label}"
    text = f"Best by in-distribution {name}: {best_loo}"
    finite = [i for i in loo_rank if math.isfinite(loo[i])]
    if len(finite) >= 2:
        _, lo_best, _ = mean_interval(cv[finite[0]])
        _, _, hi_next = mean_interval(cv[finite[1]])
        if not lo_best > hi_next:  # a NaN bound (one seed) counts as overlapping
            text += f" (its interval over seeds overlaps the next one's: {name} does not separate them)"
    text += f". Best on deploy (lowest regret): {best_dep}."
    if len(ok) >= 3:
        rho = spearmanr([-loo[i] for i in ok], [regret[i] for i in ok]).statistic
        if math.isfinite(rho):  # NaN when either side is constant
            text += f" Spearman correlation of {name} rank and deploy rank: {rho:.2f}."
    return text


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"
