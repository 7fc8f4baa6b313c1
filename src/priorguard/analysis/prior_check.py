"""Prior predictive checks: what each model believes before it sees data.

For every role (T, W, I, D) of a spec this draws hyperparameters (or weights)
from the declared priors and, from them, functions over the declared feature
ranges: one-dimensional slices through the centre of the input box, one per
feature. Structure and depth priors are reported as bar charts. Given the train
split (``priorguard prior-check`` collects it as a run would), the data each prior
draw gives at the training inputs too: the prior predictive check a run file's
``prior_predictive`` group holds. Results are an ArviZ DataTree per role (see
:func:`to_datatree`) written to netCDF, plus PNG plots.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.priors.kernels import StructureSearch
from priorguard.priors.models import BNNModel, GPModel, ModelSpec
from priorguard.priors.structure import depth_prior, structure_prior

GRID = 64


@dataclass
class RolePrior:
    """Prior draws of one role."""

    role: str
    feature_names: list[str]
    ranges: list[tuple[float, float]]
    grid: np.ndarray  # [G] in [0, 1]
    latent: np.ndarray  # [S, F, G, O] function draws, standardised units
    observed: np.ndarray  # [S, F, G, O] with observation noise
    hyper: dict[str, np.ndarray]  # site -> [S, ...]
    output_names: list[str]
    bars: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    #: the ``prior`` group as a run file writes it (same variables, dims and coords), where built
    prior_group: Any = None


def _slices(dim: int, grid: np.ndarray) -> np.ndarray:
    """``[F, G, D]`` inputs: feature f sweeps the grid, the others sit at 0.5."""
    x = np.full((dim, grid.size, dim), 0.5)
    for f in range(dim):
        x[f, :, f] = grid
    return x


def _gp_prior(spec: GPModel, role: str, names: list[str], key: Any, n: int,
              ranges: Sequence[tuple[float, float]]) -> RolePrior:
    from numpyro.infer import Predictive

    from priorguard.models.gp.groups import posterior_dataset
    from priorguard.models.gp.kernels import compile_program
    from priorguard.models.gp.objective import gp_model, theta_from_sites
    from priorguard.models.roles import ROLE_OUTPUTS

    bars = {}
    kernel = spec.kernel
    if isinstance(kernel, StructureSearch):
        prior = structure_prior(kernel, len(names))
        bars["structure"] = [(s.expression, p) for s, p in prior[:12]]
        kernel = prior[0][0].to_kernel(ard=kernel.ard)
    zero_at = [-lo / (hi - lo) for lo, hi in ranges]  # the grid is in model units (the unit cube)
    fixed = not isinstance(spec.mean, str)  # a number: a fixed prior mean in the targets' units
    program = compile_program(kernel, noise=spec.noise, mean="zero" if fixed else spec.mean, feature_names=names,
                              site_prefix=role, noise_floor=spec.noise_floor, zero_at=zero_at)
    k_hyper, k_f, k_eps = jax.random.split(key, 3)
    draws = Predictive(lambda: gp_model(program), num_samples=n)(k_hyper)
    theta = theta_from_sites(program, draws, (n,))
    grid = np.linspace(0.0, 1.0, GRID)
    x = jnp.asarray(_slices(len(names), grid))  # [F, G, D]

    def one(theta_s, key_s):
        def per_feature(xf, kf):
            k = program.kernel.gram(theta_s, xf, xf, same=True)
            chol = jnp.linalg.cholesky(k + 1e-6 * (1.0 + jnp.mean(jnp.diag(k))) * jnp.eye(xf.shape[0]))
            return chol @ jax.random.normal(kf, (xf.shape[0],)) + program.mean_value(theta_s)

        return jax.vmap(per_feature)(x, jax.random.split(key_s, x.shape[0]))

    latent = np.asarray(jax.vmap(one)(theta, jax.random.split(k_f, n)))[..., None]  # [S, F, G, 1]
    if fixed:
        latent = latent + float(spec.mean)
    noise = np.asarray(theta[f"{role}/noise"]).reshape(n, 1, 1, 1)
    observed = latent + noise * np.asarray(jax.random.normal(k_eps, latent.shape))
    hyper = {k: np.asarray(v) for k, v in draws.items()}
    outputs = list(ROLE_OUTPUTS.get(role, ("value",)))
    group = posterior_dataset(program, {k: v.reshape(1, n, 1, *v.shape[1:]) for k, v in hyper.items()}, outputs)
    return RolePrior(role, names, [], grid, latent, observed, hyper, outputs, bars, prior_group=group)


def _bnn_prior(spec: BNNModel, role: str, names: list[str], out_names: list[str], key: Any, n: int) -> RolePrior:
    from numpyro.infer import Predictive

    from priorguard.models.bnn import bnn_model
    from priorguard.models.bnn.network import _ACTIVATIONS

    d, o = len(names), len(out_names)
    bars = {}
    depths = [len(spec.hidden)]
    if spec.speed is not None:
        prior = depth_prior(list(spec.hidden), in_dim=d, out_dim=o, max_depth=spec.speed.max_depth,
                            strength=spec.speed.strength)
        bars["depth"] = [(str(dd), p) for dd, p in prior]
        depths = [dd for dd, _ in prior]
        probs = np.asarray([p for _, p in prior])
    else:
        probs = np.ones(1)
    grid = np.linspace(0.0, 1.0, GRID)
    x = _slices(d, grid).reshape(-1, d)
    k_depth, *keys = jax.random.split(key, len(depths) + 1)
    choice = np.asarray(jax.random.choice(k_depth, len(depths), (n,), p=jnp.asarray(probs)))
    latent = np.zeros((n, d, GRID, o))
    observed = np.zeros_like(latent)
    hyper: dict[str, np.ndarray] = {}
    act = _ACTIVATIONS[spec.activation]
    for j, (depth, k) in enumerate(zip(depths, keys)):
        rows = np.flatnonzero(choice == j)
        if rows.size == 0:
            continue
        model = bnn_model(spec, in_dim=d, out_dim=o, depth=depth, site_prefix=role)
        draws = Predictive(model, num_samples=int(rows.size))(k, jnp.asarray(x))
        h = jnp.broadcast_to(jnp.asarray(x), (rows.size, *x.shape))
        for i in range(depth + 1):
            h = jnp.einsum("snd,sde->sne", h, draws[f"{role}/layer{i}/w"]) + draws[f"{role}/layer{i}/b"][:, None, :]
            if i < depth:
                h = act(h)
        latent[rows] = np.asarray(h).reshape(rows.size, d, GRID, o)
        observed[rows] = np.asarray(draws[f"{role}/y"]).reshape(rows.size, d, GRID, o)
        if len(depths) == 1:
            hyper = {k2: np.asarray(v) for k2, v in draws.items()
                     if not k2.endswith("/y") and np.asarray(v).size / rows.size <= 4096}
    if len(depths) > 1:
        hyper[f"{role}/depth"] = np.asarray([depths[c] for c in choice])
        return RolePrior(role, names, [], grid, latent, observed, hyper, out_names, bars)
    return RolePrior(role, names, [], grid, latent, observed, hyper, out_names, bars,
                     prior_group=_bnn_prior_group(spec, role, hyper, names, out_names, depths[0]))


def _bnn_prior_group(spec: BNNModel, role: str, hyper: Mapping[str, np.ndarray], names: list[str],
                     out_names: list[str], depth: int) -> Any:
    """The weights' prior draws named as a run file's ``prior`` group names them
    (``feature``, ``hidden<i>``, ``output``)."""
    from priorguard.models.bnn.network import _net_config, _site_dims
    from priorguard.models.datatree import posterior_dataset as named_dataset

    cfg = _net_config(spec, role, len(names), len(out_names), depth)
    dims = {k: _site_dims(k, v.shape[1:], cfg) for k, v in hyper.items()}
    named = {"feature": names, "output": out_names, **{f"hidden{i}": np.arange(w) for i, w in enumerate(spec.hidden)}}
    coords = {d: named[d] for ds in dims.values() for d in ds if d in named}
    return named_dataset({k: v[None] for k, v in hyper.items()}, dims, coords)


def prior_draws(roles: Mapping[str, ModelSpec], info: Any, *, world_columns: Sequence[int], key: Any,
                num_draws: int = 50, on_role: Callable[[str], None] | None = None) -> dict[str, RolePrior]:
    """Prior function draws of every role of a spec.

    Args:
        roles: role name ("terminal", "world", "instrumental", "termination") -> its model
            spec, for the roles the experiment has.
        info: the environment's ``EnvInfo`` (feature names and ranges, actions).
        world_columns: the feature columns W predicts the change of.
        key: consumed; one subkey per role.
        num_draws: S, draws per role.
        on_role: called with each role's name as it starts (progress).

    Returns:
        role -> :class:`RolePrior`.
    """
    features = list(info.feature_names)
    from priorguard.models.roles import ROLE_OUTPUTS

    out = {}
    for (role, model), k in zip(roles.items(), jax.random.split(key, len(roles))):
        if on_role:
            on_role(role)
        names = list(model.features) if model.features is not None else list(features)
        if role == "world":
            acts = (list(info.action_names) if info.action_kind == "discrete"
                    else [f"action_{i}" for i in range(len(info.action_low))])
            in_names, out_names = names + acts, [features[c] for c in world_columns]
            ranges = [info.feature_ranges[f] for f in names] + (
                [(0.0, 1.0)] * len(acts) if info.action_kind == "discrete"
                else list(zip(info.action_low.tolist(), info.action_high.tolist())))
        else:
            in_names, out_names = names, list(ROLE_OUTPUTS[role])
            ranges = [info.feature_ranges[f] for f in names]
        if isinstance(model, GPModel):
            if len(out_names) > 1 and model.parents:  # one output that reads every input is shown
                rest = [n for n in out_names if n not in model.parents]
                rp = _gp_prior(model.model_copy(update={"parents": None}), role, in_names, k, num_draws, ranges)
                rp.output_names = [f"{rest[0] if rest else out_names[0]} (as if it read every input: outputs"
                                   f" with world.parents read only theirs)"]
            elif len(out_names) > 1:
                rp = _gp_prior(model, role, in_names, k, num_draws, ranges)  # independent outputs: one shown
                rp.output_names = [f"{out_names[0]} (each of {len(out_names)} outputs alike)"]
            else:
                rp = _gp_prior(model, role, in_names, k, num_draws, ranges)
                if role == "world":
                    rp.output_names = [f"delta_{n}" for n in out_names]
            rp.prior_group = rp.prior_group.assign_coords(output=rp.output_names)  # the labels above
        else:
            rp = _bnn_prior(model, role, in_names, [f"delta_{n}" for n in out_names] if role == "world" else out_names,
                            k, num_draws)
        rp.ranges = ranges
        out[role] = rp
    return out


def to_datatree(rp: RolePrior, at_inputs: Any = None) -> Any:
    """An ArviZ DataTree of a role's prior, named as a run's file names it.

    Groups: ``prior_slices`` holds the drawn functions ``<role>.f`` and the draws with noise
    ``<role>.y`` along ``(feature, grid, output)`` -- each feature's slice through the input
    box, the others at the middle -- with each slice's points in feature units (coordinate
    ``x``). With ``at_inputs`` (:func:`priorguard.models.prior_groups.prior_tree` of the
    training data), its ``prior``, ``prior_predictive`` (data each prior draw gives at the
    training inputs, over ``(obs, output)``), ``observed_data`` and ``constant_data``: the
    run file's prior side, so ``plot_ppc_dist(dt, group="prior_predictive")`` is the prior
    predictive check. Without, ``prior`` holds the slices' own hyperparameter draws (a GP's
    dims ``(chain, draw, output[, <site>.feature])``).
    """
    import arviz as az

    from priorguard.priors.sites import variable as site_var

    var = site_var(rp.role)
    groups: dict[str, Any] = {"prior_slices": {f"{var}.f": rp.latent[None], f"{var}.y": rp.observed[None]}}
    dims: dict[str, list[str]] = {name: ["feature", "grid", "output"] for name in groups["prior_slices"]}
    if rp.prior_group is None:
        groups["prior"] = {site_var(k): v[None] for k, v in rp.hyper.items()}
        dims.update({k: [f"{k}_dim{i}" for i in range(v.ndim - 2)] for k, v in groups["prior"].items()})
    coords = {"feature": rp.feature_names, "grid": rp.grid, "output": rp.output_names}
    with warnings.catch_warnings():  # ArviZ does not know the group name prior_slices
        warnings.simplefilter("ignore", UserWarning)
        dt = az.from_dict(groups, sample_dims=["chain", "draw"], dims=dims, coords=coords)
    if rp.prior_group is not None:
        dt["prior"] = rp.prior_group
    # where each slice's points lie along their feature, in the feature's own units
    x = np.stack([_feature_units(rp, f) for f in range(len(rp.feature_names))])
    dt["prior_slices"] = dt["prior_slices"].to_dataset().assign_coords(x=(("feature", "grid"), x))
    if at_inputs is not None:
        for name in at_inputs.children:
            dt[name] = at_inputs[name].to_dataset()
    return dt


def _feature_units(rp: RolePrior, f: int) -> np.ndarray:
    """The grid of feature ``f``'s slice in the feature's own units (the grid is in model units)."""
    lo, hi = rp.ranges[f]
    return lo + np.asarray(rp.grid) * (hi - lo)


def _draw_slice(ax: Any, rp: RolePrior, f: int, max_lines: int) -> None:
    """Function draws (output 0) along feature ``f`` and the 90% prior-predictive band."""
    xs = _feature_units(rp, f)
    for s in range(min(max_lines, rp.latent.shape[0])):
        ax.plot(xs, rp.latent[s, f, :, 0], lw=0.8, alpha=0.5)
    q = np.quantile(rp.observed[:, f, :, 0], [0.05, 0.95], axis=0)
    ax.fill_between(xs, q[0], q[1], color="grey", alpha=0.15, lw=0)
    ax.set_xlabel(rp.feature_names[f])


def plot_role(rp: RolePrior, path: Path, *, max_lines: int = 30) -> None:
    """Function draws along each feature (in the feature's own units), output 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nf = len(rp.feature_names)
    cols = min(nf, 4)
    rows = -(-nf // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for f in range(nf):
        ax = axes[f // cols][f % cols]
        _draw_slice(ax, rp, f, max_lines)
        ax.set_title(f"{rp.role}: {rp.output_names[0]}"[:40], fontsize=8)
    for g in range(nf, rows * cols):
        axes[g // cols][g % cols].axis("off")
    fig.suptitle(f"prior function draws ({rp.role}); band: 90% prior predictive", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_bars(title: str, bars: list[tuple[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.3 * len(bars) + 1.2))
    labels = [b[0] for b in bars][::-1]
    ax.barh(labels, [b[1] for b in bars][::-1], color="tab:blue")
    ax.set_xlabel("prior probability")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


#: folded into the seed's key for the draws at the training inputs (role i gets this + i)
_AT_INPUTS_STREAM = 0xDA7A


def write_prior_check(roles: Mapping[str, ModelSpec], info: Any, out_dir: Path, *, world_columns: Sequence[int],
                      seed: int = 0, num_draws: int = 50, on_step: Callable[[str], None] | None = None,
                      train: Mapping[str, Any] | None = None) -> list[Path]:
    """Runs the prior check and writes netCDF + PNG files into ``out_dir``.

    ``roles``, ``info`` and ``world_columns`` are as in :func:`prior_draws`. ``train``: role ->
    what a run fits that role to (``spec``, ``data``, ``kwargs`` as
    :func:`~priorguard.models.roles.fit_role` takes them; ``priorguard prior-check`` collects the
    train split as a run with the same seed does): those roles' files also get the prior
    predictive at the training inputs (see :func:`to_datatree`).

    Files are made in a temporary folder and moved in only when all succeeded.

    Returns:
        The paths written.
    """
    from priorguard.analysis.diagnostics import write_datatree

    draws = prior_draws(roles, info, world_columns=world_columns, key=jax.random.key(seed), num_draws=num_draws,
                        on_role=(lambda r: on_step(f"draw {r}")) if on_step else None)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prior-check-", dir=out_dir.parent))
    try:
        for i, (role, rp) in enumerate(draws.items()):
            if on_step:
                on_step(f"write {role}")
            at_inputs = None
            if train is not None and role in train:
                from priorguard.models.prior_groups import prior_tree

                rd = train[role]
                at_inputs = prior_tree(rd.spec, rd.data, key=jax.random.fold_in(jax.random.key(seed), _AT_INPUTS_STREAM + i),
                                       role=role, draws=num_draws, **rd.kwargs)
            write_datatree(to_datatree(rp, at_inputs), tmp / f"prior_{role}.nc")
            plot_role(rp, tmp / f"prior_{role}.png")
            for name, bars in rp.bars.items():
                plot_bars(f"{role}: {name} prior", bars, tmp / f"prior_{role}_{name}.png")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted(tmp.iterdir()):
            target = out_dir / f.name
            f.replace(target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def plot_points(role: str, draws: Sequence[tuple[str, RolePrior]], path: Path, *, max_lines: int = 30) -> None:
    """One row per sweep point: the role's prior function draws along each feature it reads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(rp.feature_names) for _, rp in draws)
    fig, axes = plt.subplots(len(draws), cols, figsize=(max(3.2 * cols, 7.0), 2.4 * len(draws)), squeeze=False)
    for r, (label, rp) in enumerate(draws):
        for f in range(cols):
            ax = axes[r][f]
            if f >= len(rp.feature_names):
                ax.axis("off")
                continue
            _draw_slice(ax, rp, f, max_lines)
            if f == 0:
                ax.set_title(label[:110], fontsize=7, loc="left")
    fig.suptitle(f"{role}: prior function draws at each sweep point (band: 90% prior predictive)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_prior_check_points(points: Sequence[tuple[dict[str, Any], Mapping[str, ModelSpec], Sequence[int]]],
                             info: Any, out_dir: Path, *, seed: int = 0, num_draws: int = 50,
                             on_step: Callable[[str], None] | None = None) -> list[Path]:
    """The sweep's points side by side: ``prior_<role>_points.png`` for every role the sweep changes.

    Args:
        points: per sweep point, its overrides, its roles and W's output columns (as for
            :func:`prior_draws`).
        info, seed, num_draws, on_step: as for :func:`write_prior_check`; every point draws
            with the same key, so points that share a prior show the same functions.

    Returns:
        The paths written (none when no role differs between points).
    """
    from priorguard.analysis.labels import point_label

    changed = [role for role in points[0][1] if len({repr(p[1].get(role)) for p in points}) > 1]
    if not changed:
        return []
    per_point = []
    for i, (overrides, roles, columns) in enumerate(points):
        if on_step:
            on_step(f"draw sweep point {i}")
        sub = {r: roles[r] for r in changed if r in roles}
        per_point.append((f"point {i}: {point_label(overrides)}",
                          prior_draws(sub, info, world_columns=columns, key=jax.random.key(seed),
                                      num_draws=num_draws)))
    written = []
    out_dir = Path(out_dir)
    for role in changed:
        draws = [(label, d[role]) for label, d in per_point if role in d]
        path = out_dir / f"prior_{role}_points.png"
        tmp = out_dir / f".prior_{role}_points.png.tmp.png"
        plot_points(role, draws, tmp)
        tmp.replace(path)
        written.append(path)
    return written
