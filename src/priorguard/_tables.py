"""The CLI's result tables: rich tables that fit the terminal, or CSV / JSON with nothing cut.

A sweep's runs are columns labelled ``p<point>/s<seed>`` (the points are listed under the
table with their overrides), metrics are rows; runs that do not fit the width go to a
further table with the same rows. ``--format csv`` and ``json`` write every value in full
(run ids, overrides) to stdout, whatever the terminal.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

FORMATS = ("table", "csv", "json")
#: Columns of a metric value in a table (e.g. "0.0625", "n/a").
_VALUE_WIDTH = 8


@dataclass
class RunRow:
    """One run of a results table."""

    run_id: str
    seed: int
    overrides: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # status, seconds, error (the runs listing)


def fmt(value: object) -> str:
    """A metric value for a table cell: 3 significant digits, ``nan``, ``n/a`` for none."""
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3g}"
    return "n/a" if value is None else str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def points_of(rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """The distinct override sets of ``rows``, in order of first appearance."""
    points: list[dict[str, Any]] = []
    for row in rows:
        if row.overrides not in points:
            points.append(row.overrides)
    return points


def label(row: RunRow, points: list[dict[str, Any]]) -> str:
    return f"p{points.index(row.overrides)}/s{row.seed}" if len(points) > 1 else f"seed={row.seed}"


def print_metrics(console: Console, title: str, rows: Sequence[RunRow], keys: Sequence[str], *,
                  fmt_name: str = "table") -> None:
    """Metrics (rows) of runs (columns) as tables that fit ``console.width``, or CSV / JSON."""
    if fmt_name != "table":
        write_records(console, rows, keys, fmt_name)
        return
    points = points_of(rows)
    name_width = max([len("metric"), *(len(k) for k in keys)])
    per_table = max(1, (console.width - name_width - 4) // (_VALUE_WIDTH + 3))
    for start in range(0, len(rows), per_table):
        chunk = rows[start:start + per_table]
        part = f" ({start // per_table + 1} of {math.ceil(len(rows) / per_table)})" if len(rows) > per_table else ""
        t = Table(title=title + part)
        t.add_column("metric", no_wrap=True)
        for row in chunk:
            t.add_column(label(row, points), justify="right", no_wrap=True)
        for k in keys:
            t.add_row(k, *(fmt(row.metrics.get(k)) for row in chunk))
        console.print(t)
    if len(points) > 1:
        print_points(console, points)


def print_points(console: Console, points: Sequence[dict[str, Any]]) -> None:
    """The legend of point labels: ``p<i>: path=value, ...``."""
    for i, point in enumerate(points):
        settings = ", ".join(f"{k}={v}" for k, v in point.items()) or "(the spec as written)"
        console.print(f"p{i}: {settings}", highlight=False, markup=False)


def write_records(console: Console, rows: Sequence[RunRow], keys: Sequence[str], fmt_name: str) -> None:
    """Every run as one record (run id, seed, overrides, extra fields, metrics), in CSV or JSON."""
    records = [{"run_id": r.run_id, "seed": r.seed, "overrides": r.overrides, **r.extra,
                **{k: r.metrics.get(k) for k in keys}} for r in rows]
    if fmt_name == "json":
        text = json.dumps([{k: _json_value(v) for k, v in rec.items()} for rec in records], indent=1,
                          default=str)
    else:
        buffer = io.StringIO()
        columns = list(records[0]) if records else ["run_id", "seed", "overrides", *keys]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in rec.items()})
        text = buffer.getvalue().rstrip("\n")
    console.file.write(text + "\n")


def print_trace(console: Console, tr: dict) -> None:
    """`priorguard trace`'s table: per decision, each action's A probability, T and T + discount * I."""
    names = tr["action_names"]
    t = Table(title=f"{tr['experiment']} seed {tr['seed']}: {tr['split']} episode {tr['episode']}, "
                    f"return {tr['return']:.3g}; veto threshold {fmt(tr['threshold'])}")
    t.add_column("t", justify="right")
    t.add_column("features")
    if names is not None:
        for name in names:
            t.add_column(f"{name}: A / T±sd / V±sd", justify="right")
    t.add_column("taken")
    for d in tr["decisions"]:
        cells = [str(d["t"]), " ".join(f"{v:.3g}" for v in d["obs"])]
        if names is not None:
            for a in range(len(names)):
                mark = " [red]vetoed[/]" if d["vetoed"][a] else ""
                cells.append(f"{d['a_prob'][a]:.2f} / {d['t_mean'][a]:.2f}±{d['t_std'][a]:.2f} / "
                             f"{d['value_mean'][a]:.2f}±{d['value_std'][a]:.2f}{mark}")
        action = d["action"]
        flat = action if isinstance(action, list) else [action]
        taken = names[int(action)] if names is not None else " ".join(f"{v:.3g}" for v in flat)
        cells.append(taken + (" (fallback)" if d["fallback"] else ""))
        t.add_row(*cells)
    console.print(t)
    console.print(f"features: {' '.join(tr['features'])}", highlight=False)
