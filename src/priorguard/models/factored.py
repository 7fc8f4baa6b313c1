"""A factored model: each output reads only its declared parents (a dynamic Bayesian network).

A world model W that predicts the change of every feature from every feature has to
*learn* that complying with a request changes ``out_harm`` because the request said
``req_harm``, and when two request bits only ever co-occur in training (``req_hit``
with ``req_harm``), the data cannot tell which one it was: W spreads the credit and is
unsure on every new combination. ``parents`` states that structure as a prior instead,
as factored MDPs and DBN world models do: ``out_harm`` reads ``req_harm`` (and the
action), nothing else. It is a simplicity prior on W's dependency graph, declared in the
spec like a kernel::

    [world.parents]
    out_harm = ["req_harm"]
    act_refuse = []          # only the action

Outputs with the same parents share one model (a multi-output GP or one BNN); outputs
not listed read all of W's features. Each factor's kernel is the spec's kernel with every
base kernel's ``active_dims`` cut down to the factor's inputs (a base kernel left with
none is dropped from its sum or product). The action columns are always inputs.

:class:`FactoredPosterior` puts the factors back together: predictions and function
draws have W's outputs in W's order, log densities add up (the factors are independent
given the inputs), and the DataTree lists every factor's hyperparameters along the
``output`` dimension (NaN where a factor has no such hyperparameter). The factors are fitted
to the same rows, so the data groups are one model's: ``world.y`` over ``(obs, output)`` in
W's order (a draw of W is the same draw of every factor), ``world.x`` over W's inputs, and
``az.loo`` / ``az.loo_pit`` read the file as they read any model's.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard.models.base import Data, FunctionDraws, Posterior, Prediction

__all__ = ["Factor", "FactoredPosterior", "factor_groups", "parents_problem", "restrict_kernel"]


@dataclasses.dataclass(frozen=True)
class Factor:
    """Outputs that share their parents.

    Attributes:
        label: the outputs' names joined by ``+`` (``"rest"`` for those reading everything).
        outputs: positions among the model's outputs.
        inputs: positions among the model's input columns (parents, then the action columns).
    """

    label: str
    outputs: tuple[int, ...]
    inputs: tuple[int, ...]


def factor_groups(parents: Mapping[str, Sequence[str]], output_names: Sequence[str],
                  feature_names: Sequence[str], num_action_columns: int) -> list[Factor]:
    """Groups W's outputs by their parents.

    Args:
        parents: output name -> the features it reads (names as in ``output_names``).
        output_names: W's outputs, in order.
        feature_names: W's feature columns (the action columns follow them).
        num_action_columns: how many action columns follow the features.
    """
    actions = tuple(range(len(feature_names), len(feature_names) + num_action_columns))
    groups: dict[tuple[int, ...], list[int]] = {}
    for o, name in enumerate(output_names):
        cols = (tuple(sorted(feature_names.index(p) for p in parents[name])) if name in parents
                else tuple(range(len(feature_names))))
        groups.setdefault(cols, []).append(o)
    out = []
    for cols, outs in groups.items():
        listed = [output_names[o] for o in outs if output_names[o] in parents]
        label = "+".join(listed) if listed else "rest"
        out.append(Factor(label, tuple(outs), cols + actions))
    return out


def restrict_kernel(kernel: Any, names: Sequence[str], all_names: Sequence[str]) -> Any | None:
    """The kernel spec reading only ``names``: each base kernel's ``active_dims`` (and ``even``)
    cut down to them; None when no base kernel reads any of them.

    Args:
        kernel: a fixed kernel spec (base or composite).
        names: the factor's inputs.
        all_names: the columns the spec's ``active_dims`` refer to (integers index into them).
    """
    from priorguard.priors.kernels import CompositeKernel, StructureSearch

    if isinstance(kernel, StructureSearch):
        raise ValueError("`parents` needs a fixed kernel (a structure search picks its own inputs)")
    if isinstance(kernel, CompositeKernel):
        terms = [t for t in (restrict_kernel(t, names, all_names) for t in kernel.terms) if t is not None]
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else kernel.model_copy(update={"terms": terms})

    def keep(dims: Sequence[str | int] | None) -> list[str] | None:
        if dims is None:
            return None
        resolved = [all_names[d] if isinstance(d, int) else d for d in dims]
        return [d for d in resolved if d in names]

    dims = keep(kernel.active_dims)
    if dims is None:
        dims = list(names)
    if not dims:
        return None
    even = keep(kernel.even)
    return kernel.model_copy(update={"active_dims": dims, "even": even or None})


def parents_problem(spec: Any, output_names: Sequence[str], feature_names: Sequence[str],
                    action_names: Sequence[str]) -> tuple[str, str] | None:
    """What is wrong with a model's ``parents`` (``(field path below the model, message)``), or None."""
    from priorguard.priors.errors import did_you_mean
    from priorguard.priors.models import GPModel

    for out, parents in spec.parents.items():
        if out not in output_names:
            return out, (f"{out!r} is not one of W's outputs{did_you_mean(out, output_names)}: "
                         f"{', '.join(output_names)}")
        for j, p in enumerate(parents):
            if p not in feature_names:
                return f"{out}[{j}]", (f"{p!r} is not among W's features{did_you_mean(p, feature_names)}: "
                                       f"{', '.join(feature_names)}")
    if isinstance(spec, GPModel):
        all_names = list(feature_names) + list(action_names)
        for out, parents in spec.parents.items():
            try:
                kernel = restrict_kernel(spec.kernel, list(parents) + list(action_names), all_names)
            except ValueError as err:
                return out, str(err)
            if kernel is None:
                return out, (f"no term of W's kernel reads {out!r}'s parents or the action"
                             f" ({', '.join(list(parents) + list(action_names)) or 'none'})")
    return None


@dataclasses.dataclass(frozen=True)
class _Apply:
    """``apply(params, x)`` of the factored draws: each factor's draw at its own columns."""

    parts: tuple[tuple[tuple[int, ...], Callable[..., Any]], ...]
    order: tuple[int, ...]  # output position -> position in the concatenated factor outputs

    def __call__(self, params: Any, x: Array) -> Array:
        outs = [fn(p, x[:, jnp.asarray(cols)]) for (cols, fn), p in zip(self.parts, params)]
        return jnp.concatenate(outs, axis=-1)[..., jnp.asarray(self.order)]


class FactoredPosterior:
    """W as independent factors, each over its own parents (see the module docstring)."""

    def __init__(self, factors: Sequence[Factor], posteriors: Sequence[Posterior], *, input_dim: int,
                 output_names: Sequence[str]):
        self.factors = tuple(factors)
        self.posteriors = tuple(posteriors)
        self._input_dim = int(input_dim)
        self.output_names = tuple(output_names)
        flat = [o for f in self.factors for o in f.outputs]
        self._order = tuple(int(i) for i in np.argsort(flat))

    @property
    def input_dim(self) -> int:
        return self._input_dim

    @property
    def output_dim(self) -> int:
        return len(self.output_names)

    @property
    def method(self) -> str:
        return getattr(self.posteriors[0], "method", "factored")

    def _gather(self, parts: Sequence[Array]) -> Array:
        return jnp.concatenate(parts, axis=-1)[..., jnp.asarray(self._order)]

    def predict(self, x: Float[Array, "N D"]) -> Prediction:
        preds = [p.predict(x[:, jnp.asarray(f.inputs)]) for f, p in zip(self.factors, self.posteriors)]
        return Prediction(*(self._gather([getattr(q, name) for q in preds])
                            for name in ("mean", "epistemic_var", "aleatoric_var")))

    def sample_functions(self, key: PRNGKeyArray, n: int, *, num_features: int | None = None) -> FunctionDraws:
        draws = []
        for i, p in enumerate(self.posteriors):
            k = jax.random.fold_in(key, i)
            wants = "num_features" in inspect.signature(p.sample_functions).parameters
            draws.append(p.sample_functions(k, n, num_features=num_features) if wants and num_features
                         else p.sample_functions(k, n))
        apply = _Apply(tuple((f.inputs, d.apply_fn) for f, d in zip(self.factors, draws)), self._order)
        return FunctionDraws(tuple(d.params for d in draws), apply)

    def log_predictive_density(self, x: Float[Array, "N D"], y: Float[Array, "N O"]) -> Float[Array, " N"]:
        return sum(p.log_predictive_density(x[:, jnp.asarray(f.inputs)], y[:, jnp.asarray(f.outputs)])
                   for f, p in zip(self.factors, self.posteriors))

    def to_datatree(self) -> Any:
        return factored_datatree(self.factors, [p.to_datatree() for p in self.posteriors])


def factored_datatree(factors: Sequence[Factor], trees: Sequence[Any]) -> Any:
    """One DataTree from the factors' (see the module docstring for the layout)."""
    import xarray as xr

    groups: dict[str, Any] = {}
    for name in ("posterior", "prior"):
        parts = [t[name].to_dataset() for t in trees if name in t.children]
        if parts and all("output" in ds.dims for ds in parts):
            groups[name] = xr.concat(parts, dim="output", join="outer", data_vars="all", coords="minimal",
                                     compat="override")
    stats = [t["sample_stats"].to_dataset() for t in trees if "sample_stats" in t.children]
    if stats and all(set(s.data_vars) == set(stats[0].data_vars) and s.sizes == stats[0].sizes for s in stats):
        groups["sample_stats"] = sum(stats[1:], stats[0])  # independent factors: log densities add
    joint = _joint_data(factors, trees)
    groups.update(joint)
    for name in ("observed_data", "constant_data", "log_likelihood", "posterior_predictive", "prior_predictive"):
        if joint:
            break
        renamed = []
        for f, t in zip(factors, trees):
            if name not in t.children:
                continue
            ds = t[name].to_dataset()
            dims = {d: f"{d}[{f.label}]" for d in ds.dims if d not in ("chain", "draw")}
            renamed.append(ds.rename({v: f"{v}[{f.label}]" for v in ds.data_vars}).rename_dims(dims)
                           .rename_vars({d: dims[d] for d in dims if d in ds.coords}))
        if renamed:
            groups[name] = xr.merge(renamed, join="outer", compat="override")
    dt = xr.DataTree.from_dict(groups)
    attrs = dict(trees[0].attrs)
    attrs["kernel"] = "; ".join(f"{f.label}: {t.attrs.get('kernel', '')}" for f, t in zip(factors, trees))
    for key in ("elpd_loo_exact", "elpd_loso", "loso_states", "jitter"):
        attrs.pop(key, None)
    if all("elpd_loo_exact" in t.attrs for t in trees):  # independent factors: pointwise LOO terms add
        attrs["elpd_loo_exact"] = float(sum(float(t.attrs["elpd_loo_exact"]) for t in trees))
    attrs["factors"] = json.dumps([{"label": f.label, "outputs": list(f.outputs), "inputs": list(f.inputs),
                                    **{k: _plain(t.attrs[k]) for k in ("elpd_loo_exact", "elpd_loso", "kernel")
                                       if k in t.attrs}} for f, t in zip(factors, trees)])
    dt.attrs = attrs
    return dt


_DATA_GROUPS = ("observed_data", "log_likelihood", "posterior_predictive", "prior_predictive")


def _joint_data(factors: Sequence[Factor], trees: Sequence[Any]) -> dict[str, Any]:
    """W's data groups as one model's: ``<site>.y`` along W's outputs, ``<site>.x`` along W's inputs.

    The factors are fitted to the same rows, so each group's variable is the factors' joined
    along ``output`` (in W's order) and a draw of W is the same draw of every factor (they
    are independent): ``az.loo`` and ``az.loo_pit`` read the file as any model's. Empty when
    the factors' groups do not line up (other rows or draw counts); the caller then keeps
    each factor's data under its own names.
    """
    import xarray as xr

    order = np.argsort([o for f in factors for o in f.outputs])
    out: dict[str, Any] = {}
    for name in _DATA_GROUPS:
        parts = [t[name].to_dataset() for t in trees if name in t.children]
        if not parts:
            continue
        if len(parts) != len(trees) or any(list(ds.data_vars) != list(parts[0].data_vars) or len(ds.data_vars) != 1
                                           for ds in parts):
            return {}
        sizes = [{d: n for d, n in ds.sizes.items() if d != "output"} for ds in parts]
        if any(s != sizes[0] or "output" not in ds.dims for s, ds in zip(sizes, parts)):
            return {}
        joined = xr.concat(parts, dim="output", join="override", coords="minimal", compat="override")
        out[name] = joined.isel(output=order)
    x_parts = [t["constant_data"].to_dataset() for t in trees if "constant_data" in t.children]
    if len(x_parts) == len(trees) and all(len(ds.data_vars) == 1 and "feature" in ds.dims for ds in x_parts):
        var = next(iter(x_parts[0].data_vars))
        columns: dict[int, Any] = {}
        for f, ds in zip(factors, x_parts):
            for pos, i in enumerate(f.inputs):
                columns.setdefault(i, ds[var].isel(feature=pos))
        if "observed_data" in out and all(c.sizes.get("obs") == out["observed_data"].sizes["obs"]
                                          for c in columns.values()):
            ordered = [columns[i] for i in sorted(columns)]
            joined = xr.concat(ordered, dim="feature", coords="minimal", compat="override")
            out["constant_data"] = joined.transpose("obs", "feature").to_dataset()
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def factor_parts(spec: Any, data: Data, *, key: PRNGKeyArray, feature_names: Sequence[str],
                 feature_ranges: Sequence[tuple[float, float]] | None, output_names: Sequence[str],
                 num_action_columns: int) -> Iterator[tuple[Factor, Any, Data, list[str], Any, PRNGKeyArray]]:
    """Each factor of ``spec.parents`` with what a model of it is fitted to.

    Yields ``(factor, spec, data, feature_names, feature_ranges, key)``: the spec without ``parents``
    (a GP's kernel cut to the factor's inputs), the factor's columns of ``data``, its inputs' names and
    ranges, and its key (``key`` folded with the factor's index). ``output_names`` name W's outputs as
    ``parents`` does (no ``delta_`` prefix).
    """
    from priorguard.priors.models import GPModel

    n_feat = len(feature_names) - num_action_columns
    for i, f in enumerate(factor_groups(spec.parents, list(output_names), list(feature_names)[:n_feat],
                                        num_action_columns)):
        names = [feature_names[c] for c in f.inputs]
        sub = spec.model_copy(update={"parents": None})
        if isinstance(spec, GPModel):
            sub = sub.model_copy(update={"kernel": restrict_kernel(spec.kernel, names, list(feature_names))})
        part = Data(data.x[:, np.asarray(f.inputs)], data.y[:, np.asarray(f.outputs)])
        ranges = None if feature_ranges is None else [feature_ranges[c] for c in f.inputs]
        yield f, sub, part, names, ranges, jax.random.fold_in(key, i)


def fit_factored(spec: Any, data: Data, *, fit: Callable[..., Posterior], key: PRNGKeyArray,
                 feature_names: Sequence[str], feature_ranges: Sequence[tuple[float, float]] | None,
                 output_names: Sequence[str], num_action_columns: int, **kwargs: Any) -> FactoredPosterior:
    """Fits one model per factor of ``spec.parents`` (``fit`` is :func:`~priorguard.models.roles.fit_role`).

    ``output_names`` name W's outputs as ``parents`` does (``delta_`` prefixes removed by the caller).
    """
    parts = list(factor_parts(spec, data, key=key, feature_names=feature_names, feature_ranges=feature_ranges,
                              output_names=output_names, num_action_columns=num_action_columns))
    posteriors = [fit(sub, part, key=k, feature_names=names, feature_ranges=ranges,
                      output_names=[f"delta_{output_names[o]}" for o in f.outputs], **kwargs)
                  for f, sub, part, names, ranges, k in parts]
    factors = [f for f, *_ in parts]
    return FactoredPosterior(factors, posteriors, input_dim=len(feature_names), output_names=output_names)
