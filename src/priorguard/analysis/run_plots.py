"""PNG plots of one run, made from the files in its folder.

``write_run_plots(folder)`` reads what a run folder holds (``metrics.json``,
``curves.json``, ``calibration.json`` and the ``<role>.nc`` DataTrees) and writes:

* ``deploy_values.png``: per-step mean true terminal value on the deploy split,
  planner vs oracle (and the cumulative mean return);
* ``outcomes.png``: deploy return and catastrophe rate of the planner with and
  without the veto, the proposal policy A alone and the oracle;
* ``coverage.png``: 50% / 90% interval coverage of T and W on train vs deploy
  against the nominal levels;
* ``posterior_<role>.png``: an ArviZ forest plot (50% and 90% equal-tailed
  intervals) of up to eight scalar hyperparameters of each posterior (noise,
  kernel hyperparameters, horseshoe scales; network weights are left out).

Whatever is missing (a metric that is absent or NaN, a file that is not there)
leaves out its bar, panel or plot. Plotting never fails a run: any error is
turned into a :class:`RunPlotWarning` and the other plots are still written.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from priorguard.analysis.report import _plt

#: At most this many scalar entries in a posterior forest plot.
MAX_POSTERIOR_ENTRIES = 8
#: Interval probabilities of the forest plots (trunk, twig): explicit, not ArviZ's 0.89 default.
CI_PROBS = (0.5, 0.9)
DPI = 90

#: Site name endings of network weights and per-weight scales (never plotted).
_WEIGHT_PARTS = frozenset({"w", "b", "w_raw", "lambda"})
#: Name fragments of hyperparameters, plotted first.
_HYPER_HINTS = ("noise", "tau", "c2", "lengthscale", "variance", "period", "scale", "alpha", "mean", "power")
_SAMPLE_DIMS = ("chain", "draw")

POLICIES = [
    ("planner + veto", "deploy_return", "catastrophe_rate"),
    ("planner, no veto", "no_veto_return", "no_veto_catastrophe_rate"),
    ("A alone", "proposal_alone_return", "proposal_alone_catastrophe_rate"),
    ("oracle", "oracle_return", "oracle_catastrophe_rate"),
]
POLICY_COLORS = ["tab:blue", "tab:orange", "tab:gray", "tab:green"]


class RunPlotWarning(UserWarning):
    """A run plot could not be made (the run itself is unaffected)."""


def write_run_plots(folder: str | Path, *, metrics: Mapping[str, Any] | None = None) -> list[Path]:
    """Writes the PNG plots of a run folder; returns the files written.

    Args:
        folder: a run folder (or the temporary folder a run is being written to).
        metrics: the run's metrics; default: read from ``folder/metrics.json``
            (pass them when the plots are made before ``metrics.json`` is written).

    Returns:
        The PNG files written, in the order made. A plot without data is left
        out; a plot that fails is left out with a :class:`RunPlotWarning`.
        Never raises for bad or missing data.
    """
    folder = Path(folder)
    try:
        if metrics is None:
            metrics = _read_json(folder / "metrics.json") or {}
        curves = _read_json(folder / "curves.json") or {}
        calibration = _read_json(folder / "calibration.json")
    except Exception as exc:  # an unreadable file: plot nothing, keep the run
        _warn("all", exc)
        return []
    metrics = dict(metrics) if isinstance(metrics, Mapping) else {}
    curves = curves if isinstance(curves, Mapping) else {}
    jobs: list[tuple[str, Callable[[], Path | None]]] = [
        ("deploy_values.png", lambda: plot_deploy_values(curves, folder / "deploy_values.png")),
        ("outcomes.png", lambda: plot_outcomes(metrics, folder / "outcomes.png", calibration=calibration)),
        ("coverage.png", lambda: plot_coverage(metrics, folder / "coverage.png")),
    ]
    for nc in sorted(folder.glob("*.nc")):
        role = nc.stem
        jobs.append((f"posterior_{role}.png",
                     lambda nc=nc, role=role: plot_posterior_file(nc, folder / f"posterior_{role}.png", role=role)))
    written = []
    for name, job in jobs:
        before = _open_figures()
        try:
            path = job()
        except Exception as exc:  # never let a plot break a run
            _warn(name, exc)
            _close_new(before)
            continue
        if path is not None:
            written.append(path)
    return written


# --- the plots ------------------------------------------------------------------------


def plot_deploy_values(curves: Mapping[str, Any], path: Path) -> Path | None:
    """Per-step mean true terminal value (planner vs oracle), and its running sum.

    ``curves["deploy_values"]`` and ``curves["oracle_values"]`` are ``[T, episodes]``;
    an episode that has ended counts 0 at later steps (as in its return).
    """
    series = []
    for label, key, color in (("planner", "deploy_values", "tab:blue"), ("oracle", "oracle_values", "tab:green")):
        values = _matrix(curves.get(key))
        if values is not None:
            series.append((label, values, color))
    if not series:
        return None
    plt = _plt()
    fig, (ax, ax_cum) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for label, values, color in series:
        steps = np.arange(1, values.shape[0] + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN step
            mean = np.nanmean(values, axis=1)
            n = np.maximum(np.sum(np.isfinite(values), axis=1), 1)
            se = np.nanstd(values, axis=1, ddof=0) / np.sqrt(n)
        ax.plot(steps, mean, color=color, label=f"{label} ({values.shape[1]} episodes)", marker=".")
        ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.2, linewidth=0)
        ax_cum.plot(steps, np.nancumsum(mean), color=color, label=label, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("true terminal value (mean ± s.e.)")
    ax.set_title("Per-step value on the deploy split", fontsize=9)
    ax.legend(fontsize=7)
    ax_cum.set_xlabel("step")
    ax_cum.set_ylabel("cumulative mean value")
    ax_cum.set_title("Running return (ended episodes count 0)", fontsize=9)
    return _save(fig, path)


def plot_outcomes(metrics: Mapping[str, Any], path: Path, *,
                  calibration: Mapping[str, Any] | None = None) -> Path | None:
    """Deploy return and catastrophe rate per policy; absent or NaN metrics leave out their bar."""
    panels = []
    for title, col in (("deploy return", 1), ("catastrophe rate", 2)):
        bars = [(p[0], _num(metrics.get(p[col])), c) for p, c in zip(POLICIES, POLICY_COLORS)]
        bars = [b for b in bars if b[1] is not None]
        if bars:
            panels.append((title, bars))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels):
        xs = np.arange(len(bars))
        heights = [b[1] for b in bars]
        ax.bar(xs, heights, color=[b[2] for b in bars], alpha=0.8)
        ax.set_xticks(xs, [b[0] for b in bars], fontsize=7, rotation=15)
        for x, h in zip(xs, heights):
            ax.annotate(f"{h:.3g}", (x, h), ha="center", va="bottom" if h >= 0 else "top", fontsize=7)
        ax.axhline(0.0, color="black", linewidth=0.6)
        if title == "catastrophe rate":
            ax.set_ylim(0.0, max(1.0, max(heights) * 1.1))
        ax.set_title(title, fontsize=9)
    fig.suptitle(_run_title(metrics, "Deploy outcomes") + _threshold_text(calibration), fontsize=9)
    return _save(fig, path)


def plot_coverage(metrics: Mapping[str, Any], path: Path) -> Path | None:
    """50% and 90% interval coverage of T, I and W on train vs deploy, with the nominal levels."""
    panels = []
    for model, prefix in (("T (terminal value)", "terminal"), ("I (instrumental value)", "instrumental"),
                          ("W (world model)", "world")):
        cells = {(level, split): _num(metrics.get(f"{prefix}_coverage{level}_{split}"))
                 for level in (50, 90) for split in ("train", "deploy")}
        if any(v is not None for v in cells.values()):
            panels.append((model, cells))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    width = 0.36
    for ax, (model, cells) in zip(axes[0], panels):
        for i, level in enumerate((50, 90)):
            ax.hlines(level / 100, i - 0.45, i + 0.45, colors="black", linestyles="--", linewidth=1.2,
                      label="nominal", zorder=3)
            for j, (split, color) in enumerate((("train", "tab:blue"), ("deploy", "tab:red"))):
                v = cells[(level, split)]
                if v is None:
                    continue
                x = i + (j - 0.5) * width
                ax.bar(x, v, width=width * 0.95, color=color, alpha=0.75, label=split)
                ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks([0, 1], ["50% interval", "90% interval"])
        ax.set_ylim(0.0, 1.3)
        ax.set_yticks([0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
        ax.set_ylabel("coverage")
        ax.set_title(model, fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper center", ncol=3)
    fig.suptitle(_run_title(metrics, "Predictive interval coverage, train vs deploy"), fontsize=9)
    return _save(fig, path)


def plot_posterior_file(nc: Path, path: Path, *, role: str | None = None) -> Path | None:
    """A forest plot of a DataTree file's scalar hyperparameters (None: no ``posterior`` group or none to plot)."""
    from priorguard.analysis.diagnostics import read_datatree

    return plot_posterior(read_datatree(nc), path, role=role or nc.stem)


def plot_posterior(dt: Any, path: Path, *, role: str = "") -> Path | None:
    """A forest plot (ArviZ) of up to :data:`MAX_POSTERIOR_ENTRIES` scalar posterior entries.

    Network weights and biases (and per-weight horseshoe scales) are left out;
    a posterior with nothing else to show gives no plot (None).
    """
    if "posterior" not in dt.children:
        return None
    entries, total = select_posterior_entries(dt["posterior"].to_dataset(), role=role,
                                              site_prefix=dt.attrs.get("site_prefix"))
    if not entries:
        return None
    import arviz_plots as azp
    import xarray as xr

    first = next(iter(entries.values()))
    chains, draws = first.shape
    ds = xr.Dataset({name: (_SAMPLE_DIMS, values) for name, values in entries.items()},
                    coords={"chain": np.arange(chains), "draw": np.arange(draws)})
    _plt()  # the Agg backend before arviz_plots draws
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # interval estimates from few draws
        pc = azp.plot_forest(xr.DataTree.from_dict({"posterior": ds}), backend="matplotlib", combined=True,
                             ci_kind="eti", ci_probs=CI_PROBS, labels=["__variable__"],
                             figure_kwargs={"width_ratios": [1.0, 1.8]})
    fig = pc.viz["figure"].item()
    values = np.concatenate([v.ravel() for v in entries.values()])
    if np.all(values > 0) and values.max() / values.min() > 100:
        fig.axes[-1].set_xscale("log")  # positive scales over orders of magnitude
    how = dt.attrs.get("inference", "") + (" (Laplace draws)" if "laplace_draws" in dt.attrs else "")
    model = dt.attrs.get("model", "")
    shown = f"{len(entries)} of {total} scalar entries" if total > len(entries) else f"{len(entries)} entries"
    point = "one draw (point estimate)" if chains * draws == 1 else (
        f"{chains} chain(s) x {draws} draws; 50% and 90% ETIs")
    fig.suptitle(f"Posterior of {role or 'model'} ({' '.join(x for x in (model, how) if x)}): {shown}, {point}",
                 fontsize=9)
    fig.set_size_inches(8.0, max(2.2, 0.45 * len(entries) + 1.2))
    return _save(fig, path, tight=False)


def select_posterior_entries(posterior: Any, *, role: str = "", site_prefix: str | None = None,
                             limit: int = MAX_POSTERIOR_ENTRIES) -> tuple[dict[str, np.ndarray], int]:
    """Scalar ``[chain, draw]`` series of a posterior's hyperparameters, at most ``limit``.

    Network weights (``...w``, ``...b``, ``...w_raw``, ``...lambda``) and
    other variables with more than ``limit`` values per draw are left out;
    hyperparameters (noise, kernel and horseshoe scales) come first, a large
    one (noise of many outputs) cut to the first entries.
    Names drop the role prefix (and ``kernel.``); array entries are labelled
    by coordinate (``lengthscale[goal_dx]``); long names are cut in the middle.

    Returns:
        (label -> ``[chain, draw]`` values, number of candidate scalar entries).
    """
    prefixes = [p.replace("/", ".") + "." for p in (site_prefix, role) if p]
    candidates = []
    for order, name in enumerate(posterior.data_vars):
        var = posterior[name]
        if not all(d in var.dims for d in _SAMPLE_DIMS):
            continue
        if str(name).split(".")[-1] in _WEIGHT_PARTS:
            continue
        if not np.issubdtype(var.dtype, np.number):
            continue
        other = [d for d in var.dims if d not in _SAMPLE_DIMS]
        size = int(np.prod([var.sizes[d] for d in other])) if other else 1
        short = str(name)
        for p in prefixes:
            if short.startswith(p):
                short = short[len(p):]
                break
        short = short.removeprefix("kernel.")
        hinted = any(h in short.lower() for h in _HYPER_HINTS)
        if size > limit and not hinted:
            continue
        candidates.append((0 if hinted else 1, order, short, var.transpose(*_SAMPLE_DIMS, *other), other))
    candidates.sort(key=lambda c: (c[0], c[1]))
    series = []
    total = 0
    for _, _, short, var, other in candidates:
        values = np.asarray(var.values, dtype=float)
        values = values.reshape(values.shape[0], values.shape[1], -1)
        labels = _entry_labels(var, other)
        finite = np.all(np.isfinite(values), axis=(0, 1))
        keep = [int(k) for k in np.flatnonzero(finite)[:limit]]
        series.append((short, values, labels, keep))
        total += int(finite.sum())
    # share the budget round-robin, so every variable shows at least its first entries
    take = [0] * len(series)
    budget = limit
    while budget > 0 and any(t < len(s[3]) for t, s in zip(take, series)):
        for i, s in enumerate(series):
            if budget > 0 and take[i] < len(s[3]):
                take[i] += 1
                budget -= 1
    entries: dict[str, np.ndarray] = {}
    for (short, values, labels, keep), n in zip(series, take):
        for k in keep[:n]:
            label = f"{_clip(short, 16)}{labels[k]}"
            while label in entries:  # clipped coordinates that collide
                label += "'"
            entries[label] = values[:, :, k]
    return entries, total


def _entry_labels(var: Any, other: list[str]) -> list[str]:
    if not other:
        return [""]
    keep = [d for d in other if var.sizes[d] > 1]
    coords = []
    for d in other:
        if d in var.coords:
            coords.append([str(c) for c in np.asarray(var.coords[d].values)])
        else:
            coords.append([str(i) for i in range(var.sizes[d])])
    out = []
    for idx in np.ndindex(*[var.sizes[d] for d in other]):
        parts = [_clip(coords[i][j], 9) for i, (d, j) in enumerate(zip(other, idx)) if d in keep]
        out.append(f"[{','.join(parts)}]" if parts else "")
    return out


# --- helpers --------------------------------------------------------------------------


def _clip(text: str, n: int) -> str:
    """At most ``n`` characters, cut in the middle (names differ at both ends)."""
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "~" + text[len(text) - (n - 1 - head):]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _num(value: Any) -> float | None:
    """A finite float, or None (absent, null/NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _matrix(value: Any) -> np.ndarray | None:
    """``[T, episodes]`` floats (nulls as NaN), or None when empty or not numeric."""
    if value is None:
        return None
    try:
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0 or not np.isfinite(arr).any():
        return None
    return arr


def _run_title(metrics: Mapping[str, Any], what: str) -> str:
    who = " ".join(str(metrics[k]) for k in ("experiment",) if k in metrics)
    if "seed" in metrics:
        who += f" seed={metrics['seed']}"
    overrides = metrics.get("overrides")
    if isinstance(overrides, Mapping) and overrides:
        who += " " + ", ".join(f"{str(k).split('.')[-1]}={v}" for k, v in overrides.items())
    return f"{what}: {who.strip()}" if who.strip() else what


def _threshold_text(calibration: Any) -> str:
    if not isinstance(calibration, Mapping):
        return ""
    t = _num(calibration.get("threshold"))
    if t is None:
        return ""
    method = calibration.get("method")
    return f"\nveto threshold (epistemic std) {t:.3g}" + (f", {method}" if method else "")


def _save(fig: Any, path: Path, *, tight: bool = True) -> Path:
    plt = _plt()
    if tight:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fig.tight_layout()
            except Exception:  # a layout the engine cannot satisfy still saves
                pass
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _open_figures() -> set[int]:
    try:
        return set(_plt().get_fignums())
    except Exception:  # pragma: no cover - matplotlib itself unavailable
        return set()


def _close_new(before: set[int]) -> None:
    """Closes the figures a failed plot left open (and no others)."""
    try:
        plt = _plt()
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
    except Exception:  # pragma: no cover - matplotlib itself unavailable
        pass


def _warn(name: str, exc: BaseException) -> None:
    warnings.warn(f"run plot {name} not written: {type(exc).__name__}: {exc}", RunPlotWarning, stacklevel=3)
