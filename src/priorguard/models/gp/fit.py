"""``fit_gp``: the GP a spec declares, exact, sparse or a kernel structure search.

The top of :mod:`priorguard.models.gp`: it dispatches to
:func:`~priorguard.models.gp.exact.fit_exact_gp`,
:func:`~priorguard.models.gp.sparse.fit_sparse_gp` and
:func:`~priorguard.models.gp.search.fit_structure_search`; nothing below imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxtyping import PRNGKeyArray

from priorguard.models.base import Data
from priorguard.models.gp.exact import fit_exact_gp
from priorguard.models.gp.search import fit_structure_search
from priorguard.models.gp.sparse import fit_sparse_gp
from priorguard.priors.kernels import StructureSearch
from priorguard.priors.models import GPModel, NutsInference

__all__ = ["fit_gp"]


def fit_gp(
    spec: GPModel | Mapping[str, Any],
    data: Data,
    *,
    key: PRNGKeyArray,
    feature_names: Sequence[str] | None = None,
    feature_ranges: Any = None,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
    standardize: bool = True,
) -> Any:
    """Fits the GP a spec declares: exact, sparse (``spec.sparse``) or a structure search.

    Args:
        spec: a :class:`~priorguard.priors.models.GPModel` (or a mapping of its fields).
        data: ``x [N, D]`` raw features (columns named by ``feature_names``),
            ``y [N, O]`` raw targets.
        key: PRNG key, consumed.
        feature_names: names of the ``D`` columns; ``spec.features`` and kernel
            ``active_dims`` names are resolved against them.
        feature_ranges: ``(low, high)`` per column (or a name -> pair mapping);
            inputs are scaled to the unit cube by them (None: training min/max).
        site_prefix: first part of every site name (``terminal``, ``instrumental``, ``world``).
        output_names: names of the outputs (datatree coordinates).
        standardize: standardise targets (the default priors assume it).

    Returns:
        :class:`~priorguard.models.gp.exact.GPPosterior`, :class:`~priorguard.models.gp.sparse.SparseGPPosterior`
        or :class:`~priorguard.models.gp.search.StructurePosterior`.

    Example:
        >>> import jax, numpy as np
        >>> from priorguard.models.base import as_data
        >>> x = np.linspace(0.0, 1.0, 12)[:, None]
        >>> spec = GPModel(model="gp", kernel={"kind": "matern52"}, inference={"method": "map", "steps": 20})
        >>> post = fit_gp(spec, as_data(x, np.sin(5 * x)), key=jax.random.key(0), feature_names=["t"],
        ...               feature_ranges=[(0.0, 1.0)])
        >>> sorted(post.map_hyperparameters())
        ['terminal/kernel/lengthscale', 'terminal/kernel/variance', 'terminal/noise']
    """
    if isinstance(spec, Mapping):
        spec = GPModel.model_validate({"model": "gp", **spec})
    fixed = not isinstance(spec.mean, str)  # a number: a fixed prior mean in the targets' units
    mean = "zero" if fixed else spec.mean
    common = dict(feature_names=feature_names, features=spec.features, feature_ranges=feature_ranges,
                  standardize=standardize, site_prefix=site_prefix, output_names=output_names,
                  prior_mean=float(spec.mean) if fixed else None, noise_floor=spec.noise_floor)
    if isinstance(spec.kernel, StructureSearch):
        return fit_structure_search(spec.kernel, data, key=key, noise=spec.noise, mean=mean,
                                    inference=spec.inference, sparse=spec.sparse, **common)
    if spec.sparse is not None:
        if isinstance(spec.inference, NutsInference):
            raise ValueError("a sparse GP fits its hyperparameters by MAP (variational); set inference.method = 'map'")
        return fit_sparse_gp(spec.kernel, data, key=key, noise=spec.noise, mean=mean, sparse=spec.sparse,
                             **common)
    return fit_exact_gp(spec.kernel, data, key=key, noise=spec.noise, mean=mean, inference=spec.inference,
                        **common)
