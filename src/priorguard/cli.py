"""The ``priorguard`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from priorguard import _cli_compare

if TYPE_CHECKING:  # imported where it is caught: the priors pull in JAX, and --help needs none of it
    from priorguard.priors.errors import SpecError

app = typer.Typer(
    name="priorguard",
    help="Explicit priors for goal learning: validate specs, check priors, run planning experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

USER_ERROR = 2


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error[/]: {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(USER_ERROR)


def _spec_fail(e: SpecError) -> NoReturn:
    where = f" {e.source}" if e.source else ""
    err.print(f"[bold red]invalid spec[/]{where}:", highlight=False)
    for issue in e.issues:
        err.print(f"  [cyan]{issue.path}[/]: {issue.message}", highlight=False, soft_wrap=True)
    raise typer.Exit(USER_ERROR)


def _load(spec: str, overrides: list[str] | None = None):
    from priorguard.experiments import load_spec, parse_override
    from priorguard.priors.errors import SpecError

    try:
        loaded = load_spec(spec)
        if overrides:
            loaded = loaded.with_overrides(dict(parse_override(o) for o in overrides), source=spec)
        return loaded
    except SpecError as e:
        _spec_fail(e)


def _at_point(spec: str, point: int, overrides: list[str] | None, *, as_sweep: bool = False):
    """The spec at sweep point ``point`` (no sweep left), then the user's overrides: they win
    over the point's value of the same field. With ``as_sweep`` the point and the overrides
    stay a one-point sweep instead, so a run records them (and gets the sweep point's run id)."""
    from priorguard.experiments import parse_override
    from priorguard.priors.errors import SpecError

    loaded = _load(spec)
    points = list(loaded.sweep_points())  # one empty point without a sweep
    if point >= len(points):
        _fail(f"--point must be in 0 .. {len(points) - 1} (the sweep has {len(points)} point(s)), got {point}")
    try:
        base = loaded.model_copy(update={"sweep": {}})
        resolved = base.with_overrides(points[point], source=spec)
        user = dict(parse_override(o) for o in overrides or [])
        if user:
            resolved = resolved.with_overrides(user, source=spec)
        if not as_sweep:
            return resolved
        return base.model_copy(update={"sweep": {path: [value] for path, value in {**points[point], **user}.items()}})
    except SpecError as e:
        _spec_fail(e)


@app.command()
def validate(
    spec: Annotated[str, typer.Argument(help="Spec file (TOML) or shipped experiment name.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the resolved spec with defaults.")] = False,
) -> None:
    """Validate a spec (and its sweep) without running anything."""
    loaded = _load(spec, set_)
    runs = len(loaded.expand())
    out.print(f"[green]ok[/]: {loaded.name} ({loaded.env}); {runs} run(s) = "
              f"{max(1, len(list(loaded.sweep_points())))} sweep point(s) x {len(loaded.seeds)} seed(s)")
    if show:
        out.print(loaded.to_toml(), highlight=False, markup=False)


@app.command("prior-check")
def prior_check(
    spec: Annotated[str, typer.Argument(help="Spec file (TOML) or shipped experiment name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for netCDF DataTrees and PNG plots.")],
    draws: Annotated[int, typer.Option("--draws", min=1, max=10_000, help="Prior draws per model.")] = 50,
    seed: Annotated[int, typer.Option("--seed", min=0, help="PRNG seed.")] = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
) -> None:
    """Draw functions from each model's prior (T, W, I, D) and plot them, with structure/depth priors."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from priorguard._runtime import configure

    loaded = _load(spec, set_)
    _prepare_out(out_dir)
    configure()
    from priorguard.analysis.prior_check import write_prior_check, write_prior_check_points
    from priorguard.experiments.context import world_outputs
    from priorguard.experiments.env_spec import info_with_ranges
    from priorguard.experiments.runner import training_sets_of

    info = info_with_ranges(loaded, seed)
    world_columns = world_outputs(loaded, list(info.feature_names))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(f"prior check {loaded.name}", total=None)
        step = lambda s: bar.update(task, description=f"prior check: {s}")  # noqa: E731
        written = write_prior_check(loaded.model_roles(), info, out_dir, world_columns=world_columns, seed=seed,
                                    num_draws=draws, on_step=step, train=training_sets_of(loaded, seed, step))
        points = [(o, r.model_roles(), world_outputs(r, list(info.feature_names)))
                  for o, r, _ in loaded.model_copy(update={"seeds": [0]}).expand()]
        if len(points) > 1:  # the sweep's points side by side
            written += write_prior_check_points(points, info, out_dir, seed=seed, num_draws=draws, on_step=step)
    out.print(f"[green]wrote[/] {len(written)} file(s) to {out_dir}:")
    out.print("\n".join(f"  {path}" for path in written), highlight=False)


@app.command()
def report(
    store_dir: Annotated[Path, typer.Argument(help="Result store folder.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder (default STORE/report).")] = None,
) -> None:
    """Write index.md and a self-contained index.html with plots for a result store."""
    if not (store_dir / "index.sqlite").is_file():
        _fail(f"{store_dir} is not a result store (no index.sqlite)")
    from priorguard.analysis.report import build_report

    try:
        page = build_report(store_dir, out_dir or store_dir / "report")
    except ValueError as e:
        _fail(str(e))
    out.print(f"[green]wrote[/] {page}")


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="distributions | kernels | experiments | envs | all")] = "all",
) -> None:
    """List distributions, kernels, shipped experiments and environments."""
    from priorguard.priors.distributions import distribution_names
    from priorguard.priors.kernels import COMPOSITE_KINDS, KERNELS

    choices = ("distributions", "kernels", "experiments", "envs", "all")
    if what not in choices:
        from priorguard.priors.errors import did_you_mean

        _fail(f"cannot list {what!r}{did_you_mean(what, choices)}; choose one of {', '.join(choices)}")
    if what in ("kernels", "all"):
        t = Table(title="kernels")
        t.add_column("kind")
        t.add_column("hyperparameters")
        for k, kind in KERNELS.items():
            t.add_row(k, ", ".join(kind.params))
        for k in COMPOSITE_KINDS:
            t.add_row(k, "terms = [kernel, ...]")
        t.add_row("{ search = [...] }", "structure search: max_terms, simplicity, speed, operators, evidence")
        out.print(t)
    if what in ("experiments", "all"):
        from priorguard.experiments.catalog import shipped_experiments

        t = Table(title="shipped experiments")
        t.add_column("name")
        t.add_column("path")
        for name, path in shipped_experiments().items():
            t.add_row(name, str(path))
        out.print(t)
    if what in ("envs", "all"):
        from priorguard.envs import env_info, list_envs

        t = Table(title="environments")
        for col in ("id", "actions", "features"):
            t.add_column(col)
        for env_id in list_envs():
            info = env_info(env_id)
            acts = (f"{info.num_actions} discrete" if info.action_kind == "discrete"
                    else f"continuous, dim {len(info.action_low)}")
            t.add_row(env_id, acts, ", ".join(info.feature_names))
        out.print(t)
    if what in ("distributions", "all"):
        names = sorted(distribution_names())
        out.print(f"[bold]distributions[/] ({len(names)}, numpyro's parameter names):")
        out.print(", ".join(names), highlight=False)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--out", help="Write the JSON Schema here.")] = None,
) -> None:
    """Print (or write) the JSON Schema of the experiment spec."""
    from priorguard.experiments.spec import ExperimentSpec

    text = json.dumps(ExperimentSpec.model_json_schema(), indent=2, sort_keys=True)
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        output.write_text(text + "\n", encoding="utf-8")
        out.print(f"wrote {output}")


def _check_format(fmt_name: str) -> None:
    from priorguard._tables import FORMATS

    if fmt_name not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}; got {fmt_name!r}")


def _table_keys(spec: Any, runs: list[dict]) -> list[str]:
    """The results table's rows: the metric registry's "cli" view, with the env's outcome metrics."""
    from priorguard.metrics import register_outcomes, table_metrics

    register_outcomes(spec.source().info.outcome_flags)
    return [m.name for m in table_metrics("cli", runs)]


def _prepare_out(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir} exists and is not a folder")


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="Spec file (TOML) or shipped experiment name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Result store folder.")] = Path("runs"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Run only this seed.")] = None,
    all_points: Annotated[bool, typer.Option("--sweep", help="Run every sweep point (default: the first).")] = False,
    point: Annotated[int, typer.Option("--point", min=0, help="Which sweep point to run (0: the first).")] = 0,
    fmt_name: Annotated[str, typer.Option("--format", help="Results as table | csv | json.")] = "table",
) -> None:
    """Run an experiment: fit T, W, I (and D) on the train split, plan on deploy, score against the truth.

    Without --sweep one sweep point runs (--point, the first by default), and a --set wins over
    the point's value of the same field.
    """
    from priorguard._runtime import configure

    if all_points and point:
        _fail("--point picks one sweep point; --sweep runs them all: give one of them")
    _check_format(fmt_name)
    loaded = _load(spec, set_) if all_points else _at_point(spec, point, set_, as_sweep=True)
    _prepare_out(out_dir)
    if seed is not None:
        loaded = loaded.model_copy(update={"seeds": [seed]})
    configure()
    _sweep_and_report(loaded, out_dir, workers=1, backend="local", address=None, progress=True, fmt_name=fmt_name)


@app.command()
def sweep(
    spec: Annotated[str, typer.Argument(help="Spec file (TOML) or shipped experiment name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Result store folder.")] = Path("runs"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="Parallel runs.")] = 1,
    backend: Annotated[str, typer.Option("--backend", help="local | ray")] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", help="Ray cluster address (HOST:PORT, or auto for the cluster of `ray start`); "
                          "default: a local Ray on loopback with --workers CPUs.")] = None,
    fmt_name: Annotated[str, typer.Option("--format", help="Results as table | csv | json.")] = "table",
) -> None:
    """Run the spec's sweep grid x seeds; resumes where a previous sweep stopped."""
    from priorguard._runtime import configure

    if backend not in ("local", "ray"):
        _fail(f"--backend must be 'local' or 'ray', got {backend!r}")
    if address is not None and backend != "ray":
        _fail("--address is for --backend ray")
    _check_format(fmt_name)
    loaded = _load(spec, set_)
    _prepare_out(out_dir)
    if backend == "ray":
        from priorguard.experiments.sweep import BackendError, check_ray_address, import_ray

        try:
            import_ray()
            check_ray_address(address)
        except BackendError as e:
            _fail(escape(str(e)))
    configure()
    _sweep_and_report(loaded, out_dir, workers=workers, backend=backend, address=address, progress=False,
                      fmt_name=fmt_name)


def _sweep_and_report(loaded, out_dir: Path, *, workers: int, backend: str, address: str | None,
                      progress: bool, fmt_name: str = "table") -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
    from rich.progress import TimeElapsedColumn, TimeRemainingColumn

    from priorguard.store import ResultStore, StoreBusyError
    from priorguard.experiments.sweep import BackendError, run_sweep, tasks_for

    tasks = tasks_for(loaded, out_dir)
    store = ResultStore(out_dir)
    failures = 0
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err,
                  transient=True) as bar:
        overall = bar.add_task(f"{loaded.name}: {len(tasks)} run(s)", total=len(tasks))

        def on_event(kind, task, outcome):
            nonlocal failures
            label = f"seed={task.seed}" + "".join(f" {k}={v}" for k, v in task.overrides.items())
            if kind == "start":
                bar.update(overall, description=f"{loaded.name}: running {label}")
                return
            if kind == "damaged":  # outcome: the files that changed since the run was written
                bar.console.print(f"[yellow]damaged[/] {label}: {', '.join(outcome)} changed since {task.run_id}"
                                  " was written; making it again", highlight=False)
                return
            failures += kind == "failed"
            bar.console.print(f"[red]failed[/] {label}: {((outcome.error or '').splitlines() or [''])[0]}"
                              if kind == "failed" else f"[dim]skip[/] {label} (already done: {task.run_id})"
                              if kind == "skip" else f"[green]done[/] {label} -> {store.run_dir(task.run_id)}",
                              highlight=False)
            bar.advance(overall)

        try:
            if progress and workers == 1 and backend == "local" and len(tasks) == 1:
                # a single run in this process: show its steps on the bar
                from priorguard.experiments.sweep import run_here

                with store.exclusive():
                    run_here(loaded, tasks[0], store, on_event,
                              lambda step: bar.update(overall, description=f"{loaded.name}: {step}"))
            else:
                run_sweep(tasks, store, workers=workers, backend=backend, address=address, on_event=on_event)
        except (BackendError, StoreBusyError) as e:
            _fail(escape(str(e)))
        except KeyboardInterrupt:
            bar.stop()
            _interrupted(store, {t.run_id for t in tasks}, out_dir)
    from priorguard._tables import RunRow, label as row_label, points_of, print_metrics

    order = {t.run_id: i for i, t in enumerate(tasks)}  # the sweep's order: points, then seeds
    rows = sorted((RunRow(rec.run_id, rec.seed, rec.overrides, rec.metrics)
                   for rec in store.records(experiment=loaded.name) if rec.run_id in order and rec.metrics),
                  key=lambda row: order[row.run_id])
    if rows:
        shown = _table_keys(loaded, [row.metrics for row in rows])
        print_metrics(out, f"{loaded.name} ({out_dir})", rows, shown, fmt_name=fmt_name)
        points = points_of(rows)
        for row in rows:  # what a number in the table cannot say
            label, metrics = row_label(row, points), row.metrics
            for key in ("veto_calibration_warning", "veto_precision_na", "veto_recall_na"):
                if metrics.get(key):
                    err.print(f"[yellow]{label}[/]: {key.removesuffix('_na').replace('_', ' ')}: "
                              f"{escape(str(metrics[key]))}", highlight=False)
    if failures:
        err.print(f"[red]{failures} run(s) failed[/]; see `priorguard runs {out_dir} --status failed`")
        raise typer.Exit(1)


def _interrupted(store, ids: set[str], out_dir: Path) -> NoReturn:
    """Ctrl-C: the finished runs stay; the interrupted ones go back to pending (the next sweep resumes them)."""
    store.reconcile()  # runs marked running without a complete folder -> pending; partial folders removed
    done = sum(1 for rec in store.records() if rec.run_id in ids and rec.status == "done")
    err.print(f"[yellow]interrupted[/]: {done} of {len(ids)} run(s) done and kept in {out_dir}; the others are"
              f" pending, and the same command resumes them", highlight=False)
    raise typer.Exit(130)


@app.command()
def trace(
    spec: Annotated[str, typer.Argument(help="Spec file (TOML) or shipped experiment name.")],
    seed: Annotated[int, typer.Option("--seed", help="The run's seed.")] = 0,
    point: Annotated[int, typer.Option("--point", min=0, help="Which sweep point (0: the first).")] = 0,
    episode: Annotated[int, typer.Option("--episode", min=0, help="Which episode of the batch.")] = 0,
    split: Annotated[str, typer.Option("--split", help="deploy | train")] = "deploy",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: path=value (after the point).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the trace here (JSON) and a figure beside it (.png).")] = None,
    feature: Annotated[str | None, typer.Option("--feature", help="The feature the figure's top panel shows.")] = None,
) -> None:
    """The anatomy of a decision: one episode of a run, decision by decision (A's proposals, W's
    predicted states, T and I there across sampled worlds, the veto, the search, the choice)."""
    from priorguard._runtime import configure

    if split not in ("deploy", "train"):
        _fail(f"--split must be 'deploy' or 'train', got {split!r}")
    resolved = _at_point(spec, point, set_)
    if episode >= resolved.data.deploy_episodes:
        _fail(f"--episode must be in 0 .. {resolved.data.deploy_episodes - 1} (data.deploy_episodes), got {episode}")
    if feature is not None:
        names = list(resolved.source().info.feature_names)
        if feature not in names:
            _fail(f"--feature {feature!r} is not a feature of {resolved.env_label}; allowed: {', '.join(names)}")
    if out_path is not None and not out_path.parent.exists():
        _fail(f"--out: the folder {out_path.parent} does not exist")
    configure()
    from priorguard.experiments.trace import plot_trace, trace_episode

    from priorguard._tables import print_trace

    tr = trace_episode(resolved, seed, split=split, episode=episode)
    print_trace(out, tr)
    if out_path is not None:
        out_path.write_text(json.dumps(tr, indent=1))
        drawn = tr["action_names"] is not None and bool(tr["decisions"])
        if drawn:
            plot_trace(tr, out_path.with_suffix(".png"), feature=feature)
        out.print(f"wrote {out_path}" + (f" and {out_path.with_suffix('.png')}" if drawn else ""), highlight=False)


@app.command()
def runs(
    store_dir: Annotated[Path, typer.Argument(help="Result store folder.")] = Path("runs"),
    experiment: Annotated[str | None, typer.Option("--experiment", help="Only this experiment.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="pending | running | done | failed")] = None,
    fmt_name: Annotated[str, typer.Option("--format", help="table | csv | json.")] = "table",
) -> None:
    """List the runs in a result store (full run ids; csv and json hold every field)."""
    from priorguard._tables import RunRow, fmt, points_of, print_points, write_records
    from priorguard.store import ResultStore

    if not (store_dir / "index.sqlite").is_file():
        _fail(f"{store_dir} is not a result store (no index.sqlite)")
    if status is not None and status not in ("pending", "running", "done", "failed"):
        _fail(f"--status must be pending, running, done or failed; got {status!r}")
    _check_format(fmt_name)
    store = ResultStore(store_dir)
    records = store.records(experiment=experiment, status=status)
    if fmt_name != "table":
        write_records(out, [RunRow(r.run_id, r.seed, r.overrides, r.metrics or {},
                                   {"experiment": r.experiment, "status": r.status, "seconds": r.seconds,
                                    "error": r.error}) for r in records], ["regret", "catastrophe_rate"], fmt_name)
        return
    rows = [RunRow(r.run_id, r.seed, r.overrides) for r in records]
    points = points_of(rows)
    several = len({r.experiment for r in records}) > 1
    t = Table(title=f"runs in {store_dir}")
    for col in ("run_id", *(["experiment"] if several else []), "seed", "point", "status", "seconds", "regret",
                "catastrophes"):
        t.add_column(col, no_wrap=True)
    for rec, row in zip(records, rows):
        m = rec.metrics or {}
        t.add_row(rec.run_id, *([rec.experiment] if several else []), str(rec.seed), f"p{points.index(row.overrides)}",
                  rec.status, fmt(rec.seconds), fmt(m.get("regret")), fmt(m.get("catastrophe_rate")))
    out.print(t)
    print_points(out, points)
    for rec in records:
        if rec.error:
            err.print(f"[red]{rec.run_id}[/] failed: {escape(rec.error.splitlines()[0])}", highlight=False)


def main() -> None:
    """Console entry point."""
    try:
        app(prog_name="priorguard")  # also after entry()'s re-exec as `python -m priorguard.cli`
    except Exception as e:  # a SpecError or StoreError raised past a command's own handling
        from priorguard.priors.errors import SpecError
        from priorguard.store import StoreError

        if not isinstance(e, SpecError | StoreError):
            raise
        try:
            _spec_fail(e) if isinstance(e, SpecError) else _fail(str(e))
        except typer.Exit as done:
            sys.exit(done.exit_code)


def entry() -> None:
    """The ``priorguard`` command: :func:`main` in an interpreter with a fixed ``PYTHONHASHSEED``.

    Without one, programs built by iterating over sets lower differently in each
    process (see :data:`priorguard._runtime.HASH_SEED`), so compiled programs
    would never be reused across runs; the command re-executes itself once.
    """
    from priorguard._runtime import HASH_SEED, hash_seed_is_fixed

    if not hash_seed_is_fixed():
        os.environ["PYTHONHASHSEED"] = HASH_SEED
        try:
            os.execv(sys.executable, [sys.executable, "-m", "priorguard.cli", *sys.argv[1:]])
        except OSError as exc:  # run on in this process: only cross-process program reuse is lost
            err.print(f"[yellow]warning[/]: could not restart with PYTHONHASHSEED={HASH_SEED} ({exc.strerror});"
                      " compiled programs will not be reused across runs. Set PYTHONHASHSEED=0 to avoid this.")
    main()


_cli_compare.register(app, out, _fail, _check_format)

if __name__ == "__main__":
    entry()
