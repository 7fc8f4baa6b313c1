"""What a GP fit starts from: the data in model units, grouped repeats, the kernel spec.

Columns are scaled to the unit cube with the declared ``feature_ranges`` (else
the training minimum and maximum), targets are standardised per output; both
transforms are stored (:class:`Prepared`) and undone in predictions, densities
and function draws, so callers only ever see raw units.

Repeated inputs (discrete environments revisit a few states thousands of
times) are grouped (:func:`group_repeated_inputs`): the same marginal
likelihood is computed on the unique inputs, their average targets with noise
``s^2 / n`` and the within-group scatter
(:func:`priorguard.models.gp.objective.log_likelihood`), in O(U^3) per step
instead of O(N^3); draws merge repeated basis rows
(:func:`collapse_duplicate_inputs`).

Shapes: N training points, D input columns of ``data.x``, O outputs, U unique inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from priorguard._compile import shape_bucket
from priorguard.models.base import Data

if TYPE_CHECKING:
    from priorguard.models.gp.kernels import GPProgram

__all__ = ["GroupedTargets", "Prepared", "as_kernel_spec", "collapse_duplicate_inputs", "group_repeated_inputs",
           "prepare_data"]


@dataclass(frozen=True, eq=False)
class Prepared:
    """Training data in model units, with the transforms that produced it.

    Attributes:
        x: ``[N, D_model]`` inputs scaled to the unit cube.
        y: ``[N, O]`` standardised targets.
        columns: indices of ``data.x`` columns the model reads.
        low, scale: input transform, ``x_model = (x[:, columns] - low) / scale``.
        y_mean, y_scale: target transform, ``y_model = (y - y_mean) / y_scale``.
        feature_names: names of the model's columns; output_names: of the outputs.
        raw_x, raw_y: the data as given (``[N, D]``, ``[N, O]``).
    """

    x: np.ndarray
    y: np.ndarray
    columns: tuple[int, ...]
    low: np.ndarray
    scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]
    raw_x: np.ndarray = field(repr=False)
    raw_y: np.ndarray = field(repr=False)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def num_outputs(self) -> int:
        return self.y.shape[1]

    @property
    def input_dim(self) -> int:
        return self.raw_x.shape[1]

    @property
    def zero_at(self) -> tuple[float, ...]:
        """Per model column, where a raw 0 lies in model units (an ``even`` kernel reflects through it)."""
        return tuple(float(v) for v in -np.asarray(self.low) / np.asarray(self.scale))


def _scale_or_one(scale: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The targets' scale, or 1 where it is rounding error: constant targets (std about 1e-16
    of their size) would otherwise shrink the prior's scale, and every uncertainty, to nothing.
    The guard is relative to the targets' size, as the BNN's."""
    return np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)


def prepare_data(
    data: Data,
    *,
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    output_names: Sequence[str] | None = None,
    prior_mean: float | None = None,
) -> Prepared:
    """Validates data and applies the unit-cube and standardising transforms.

    Args:
        data: ``x [N, D]`` raw features, ``y [N, O]`` raw targets.
        feature_names: names of the ``D`` columns (default ``x0 ... x{D-1}``).
        features: the columns the model reads, by name (default all).
        feature_ranges: ``(low, high)`` per column of ``data.x`` (a sequence of
            ``D`` pairs) or a mapping from feature name to ``(low, high)``;
            None uses the training minimum and maximum.
        standardize: standardise targets per output.
        output_names: names of the ``O`` outputs (default ``y0 ...``).
        prior_mean: a fixed prior mean in the targets' units: targets are then
            centred on it (not on their average) and scaled by their root mean
            square about it, so a zero-mean GP in model units reverts to
            ``prior_mean`` away from the data.
    """
    x = np.asarray(data.x, dtype=np.float64)
    y = np.asarray(data.y, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("GP data must be finite: x or y holds NaN or inf")
    n, d_all = x.shape
    if n < 1:
        raise ValueError("GP data needs at least one point")
    names_all = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(d_all)]
    if len(names_all) != d_all:
        raise ValueError(f"feature_names has {len(names_all)} names but data.x has {d_all} columns")
    if features is not None:
        missing = [f for f in features if f not in names_all]
        if missing:
            raise ValueError(f"model features {missing} are not among the data's columns {names_all}")
        columns = tuple(names_all.index(f) for f in features)
    else:
        columns = tuple(range(d_all))
    model_names = tuple(names_all[c] for c in columns)
    xm = x[:, list(columns)]
    if feature_ranges is None:
        low, high = xm.min(axis=0), xm.max(axis=0)
        high = np.where(high > low, high, low + 1.0)
    elif isinstance(feature_ranges, Mapping):
        try:
            pairs = np.asarray([feature_ranges[nm] for nm in model_names], dtype=np.float64)
        except KeyError as err:
            raise ValueError(f"feature_ranges has no range for feature {err.args[0]!r}") from None
        low, high = pairs[:, 0], pairs[:, 1]
    else:
        pairs = np.asarray(feature_ranges, dtype=np.float64)
        if pairs.shape != (d_all, 2):
            raise ValueError(f"feature_ranges must be {d_all} (low, high) pairs, got shape {pairs.shape}")
        low, high = pairs[list(columns), 0], pairs[list(columns), 1]
    if not np.all(high > low):
        raise ValueError(f"feature_ranges need high > low; got low={low.tolist()}, high={high.tolist()}")
    scale = high - low
    if prior_mean is not None:
        y_mean = np.full(y.shape[1], float(prior_mean))
        y_scale = np.sqrt(np.mean((y - y_mean) ** 2, axis=0)) if standardize else np.ones(y.shape[1])
        y_scale = _scale_or_one(y_scale, y_mean)
    elif standardize:
        y_mean = y.mean(axis=0)
        y_scale = _scale_or_one(y.std(axis=0), y_mean)
    else:
        y_mean = np.zeros(y.shape[1])
        y_scale = np.ones(y.shape[1])
    outs = tuple(output_names) if output_names is not None else tuple(f"y{i}" for i in range(y.shape[1]))
    if len(outs) != y.shape[1]:
        raise ValueError(f"output_names has {len(outs)} names but y has {y.shape[1]} columns")
    return Prepared(
        x=(xm - low) / scale, y=(y - y_mean) / y_scale, columns=columns, low=low, scale=scale,
        y_mean=y_mean, y_scale=y_scale, feature_names=model_names, output_names=outs, raw_x=x, raw_y=y,
    )


class GroupedTargets(NamedTuple):
    """One output's targets summarised over repeated inputs (or ``O`` outputs on a last axis).

    Attributes:
        counts: ``[U]`` copies of each unique input (0 on padding rows).
        mean: ``[U]`` (or ``[U, O]``) average target at each unique input.
        scatter: ``[U]`` (or ``[U, O]``) sum of squared deviations from that average.
    """

    counts: Array
    mean: Array
    scatter: Array


#: Group repeated inputs when the padded number of unique inputs is at most this fraction of N.
GROUP_FRACTION = 0.75


def group_repeated_inputs(program: GPProgram, x: np.ndarray, y: np.ndarray, *, always: bool = False,
                          return_inverse: bool = False) -> Any:
    """The data as unique inputs and :class:`GroupedTargets`, or None when grouping does not pay.

    The unique inputs are padded (with copies of the first, ``counts = 0``) to a
    shape bucket, so fits with a few more or fewer unique inputs share compiled
    code. Kernels with a white-noise term are never grouped: white noise is
    independent per observation, not per input, so it does not act on groups.

    Args:
        program: the model (its kernel decides whether grouping is exact).
        x: ``[N, D]`` model inputs.
        y: ``[N, O]`` model targets.
        always: group even when it does not pay (for scores per unique input).
        return_inverse: also return each row's unique input.

    Returns:
        ``(x_unique [U', D], GroupedTargets with [U'] counts and [U', O] mean and scatter)``,
        with ``[N]`` row -> unique-input indices last where ``return_inverse``.
    """
    if program.kernel.has_white():
        return None
    uniq, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    u = uniq.shape[0]
    size = shape_bucket(u, direction="up")
    if size > GROUP_FRACTION * x.shape[0] and not always:
        return None
    inverse = inverse.reshape(-1)
    n = np.zeros(size)
    n[:u] = counts
    sums = np.zeros((size, y.shape[1]))
    np.add.at(sums, inverse, y)
    mean = sums / np.maximum(n, 1.0)[:, None]
    scatter = np.zeros_like(sums)
    np.add.at(scatter, inverse, (y - mean[inverse]) ** 2)
    x_unique = np.concatenate([uniq, np.repeat(uniq[:1], size - u, axis=0)])
    if return_inverse:
        return x_unique, GroupedTargets(n, mean, scatter), inverse
    return x_unique, GroupedTargets(n, mean, scatter)


def collapse_duplicate_inputs(x: np.ndarray, v: Array) -> tuple[np.ndarray, Array]:
    """Merges repeated training inputs of the update term ``k(x, X) v`` (exactly).

    ``sum_i k(x, X_i) v_i`` over rows with equal ``X_i`` is ``k(x, X_u) sum v_i``,
    so the basis shrinks to the unique rows (padded with zero-weight copies to
    a shape bucket, so fits with a few more or fewer unique inputs share
    compiled code). On discrete environments T and I are fitted on thousands
    of visits to a few dozen states; this makes every planner evaluation of a
    draw cost O(unique states) instead of O(N).

    Args:
        x: ``[N, D]`` standardised training inputs.
        v: ``[S, O, N]`` update weights.

    Returns:
        ``(x_basis [U', D], v [S, O, U'])`` with ``U' >= U``; unchanged when
        fewer than a quarter of the rows are repeats.
    """
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    u = uniq.shape[0]
    size = shape_bucket(u, direction="up", per_octave=2, exact_below=0)
    if size > 0.75 * x.shape[0]:
        return x, v
    x_basis = np.concatenate([uniq, np.repeat(uniq[:1], size - u, axis=0)])  # padding rows carry v = 0
    return x_basis, _sum_duplicates(v, jnp.asarray(inverse.reshape(-1)), size)


@functools.partial(jax.jit, static_argnums=2)
def _sum_duplicates(v: Array, inverse: Array, size: int) -> Array:
    """``v [S, O, N]`` summed over rows with the same ``inverse`` index: ``[S, O, size]``."""
    return jnp.moveaxis(jax.ops.segment_sum(jnp.moveaxis(v, -1, 0), inverse, num_segments=size), 0, -1)


def as_kernel_spec(kernel: Any) -> Any:
    """A kernel spec object, parsed from its dict form when given one."""
    if isinstance(kernel, Mapping):
        from priorguard.priors.kernels import parse_kernel

        return parse_kernel(kernel)
    return kernel
