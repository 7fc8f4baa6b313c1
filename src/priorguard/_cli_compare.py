"""``priorguard compare``: az.compare over a sweep's priors beside deploy regret.

:func:`register` adds it to the cli module's app (passed in, so that the command lands on the
app that runs also when the cli module is ``__main__``).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

ROLES = ("terminal", "instrumental", "world", "termination")


def register(app: typer.Typer, out: Any, fail: Callable[[str], Any], check_format: Callable[[str], None]) -> None:
    """Adds ``priorguard compare`` to ``app``."""

    @app.command()
    def compare(
        store_dir: Annotated[Path, typer.Argument(help="Result store folder (a sweep with several priors).")],
        role: Annotated[str, typer.Option("--role", help="terminal | instrumental | world | termination")] = "terminal",
        plot: Annotated[Path | None, typer.Option("--plot", help="Also write elpd-LOO vs deploy regret (.png).")] = None,
        fmt_name: Annotated[str, typer.Option("--format", help="table | csv | json.")] = "table",
    ) -> None:
        """Rank a sweep's priors with az.compare (PSIS-LOO, per seed) beside deploy regret and OOD AUROC."""
        if not (store_dir / "index.sqlite").is_file():
            fail(f"{store_dir} is not a result store (no index.sqlite)")
        if role not in ROLES:
            fail(f"--role must be terminal, instrumental, world or termination; got {role!r}")
        check_format(fmt_name)
        from priorguard.analysis.compare import compare_store, plot_compare

        rows = compare_store(store_dir, role=role)
        if not rows:
            fail(f"{store_dir} has no seed with done runs at two or more sweep points: nothing to compare")
        if fmt_name == "json":
            out.print_json(json.dumps([r.to_dict() for r in rows]))
        elif fmt_name == "csv":
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0].to_dict()))
            writer.writeheader()
            writer.writerows(r.to_dict() for r in rows)
        else:
            _print_table(out, rows, role, store_dir)
        if plot is not None:
            written = plot_compare(rows, plot)
            (out.print if fmt_name == "table" else typer.echo)(f"wrote {written}")


def _print_table(out: Any, rows: list[Any], role: str, store_dir: Path) -> None:
    from priorguard._tables import fmt
    from priorguard.analysis.compare import verdicts

    points = sorted({r.point for r in rows})
    several = len({r.experiment for r in rows}) > 1
    header = (*(["experiment"] if several else []), "seed", "pt", "LOO#", "elpd±se", "Δ±dse", "w", "LOSO",
              "regret", "reg#", "AUROC")
    cells = [(*([r.experiment] if several else []), str(r.seed), f"p{points.index(r.point)}", fmt(r.loo_rank),
              f"{fmt(r.elpd_loo)}±{fmt(r.se)}", f"{fmt(r.elpd_diff)}±{fmt(r.dse)}", fmt(r.weight),
              fmt(r.elpd_loso), fmt(r.regret), fmt(r.regret_rank), fmt(r.ood_auroc)) for r in rows]
    widths = [max(len(c) for c in column) for column in zip(header, *cells)]
    t = Table(title=f"{role}: az.compare per seed, beside deploy", box=box.SIMPLE_HEAD, padding=(0, 1),
              pad_edge=False, width=sum(widths) + 2 * len(widths))
    for col, w in zip(header, widths):
        t.add_column(col, no_wrap=True, min_width=w)
    for row in cells:
        t.add_row(*row)
    out.print(t, width=max(out.width, t.width), crop=False)  # never cut a number: a narrow terminal wraps
    for i, p in enumerate(points):
        out.print(f"p{i}: {p}", highlight=False, markup=False)
    out.print("LOO#, reg#: rank by elpd-LOO and by deploy regret (0 best); Δ±dse: elpd difference to the best;"
              " w: stacking weight; LOSO: leave one state out (exact GPs); AUROC: OOD AUROC on the probe set",
              highlight=False, markup=False)
    for line in verdicts(rows, {p: f"p{i}" for i, p in enumerate(points)}):
        out.print(line, highlight=False, markup=False)
