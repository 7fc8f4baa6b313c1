"""T, I, W and D: the roles a fitted model plays, and one entry point to fit any of them.

``fit_role`` dispatches a role's spec (``model = "gp" | "bnn"``) to the GP or
BNN backend with the role's stable site prefix, the feature names it sees and
their declared ranges (inputs are scaled to [0, 1] by them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from jaxtyping import PRNGKeyArray

from priorguard.models.base import Data, Posterior
from priorguard.priors.models import BNNModel, GPModel

Role = Literal["terminal", "instrumental", "world", "termination"]


#: Output names of the one-output roles in their DataTrees (W's are ``delta_<feature>``).
ROLE_OUTPUTS = {"terminal": ("value",), "instrumental": ("value",), "termination": ("episode_ends",)}


def fit_role(
    spec: GPModel | BNNModel,
    data: Data,
    *,
    key: PRNGKeyArray,
    role: Role,
    feature_names: Sequence[str],
    feature_ranges: Sequence[tuple[float, float]] | None = None,
    output_names: Sequence[str] | None = None,
    num_action_columns: int = 0,
) -> Posterior:
    """Fits T, I, W or D as its spec says.

    Args:
        spec: the role's model spec.
        data: ``x [N, D]`` (columns named by ``feature_names``: the spec's
            ``features`` already selected, plus the action columns for W),
            ``y [N, O]``.
        key: consumed.
        role: the site prefix (``terminal/kernel/lengthscale``, ``world/layer0/w``).
        feature_names: names of the ``D`` input columns.
        feature_ranges: ``(low, high)`` of each input column.
        output_names: names of the ``O`` outputs in the DataTree (default: :data:`ROLE_OUTPUTS`
            for T, I and D; W's are ``delta_<feature>``, and its ``parents`` name the features).
        num_action_columns: W: how many of the last input columns encode the action (every
            factor of a W with ``parents`` reads them).

    Returns:
        A :class:`~priorguard.models.base.Posterior`.
    """
    # The caller has already picked the spec's ``features`` (see role_inputs) and, for W,
    # appended the action columns: data.x holds exactly what the model reads.
    if isinstance(spec, GPModel | BNNModel) and spec.features is not None:
        spec = spec.model_copy(update={"features": None})
    if output_names is None and role in ROLE_OUTPUTS and data.y.shape[1] == 1:
        output_names = list(ROLE_OUTPUTS[role])
    if getattr(spec, "parents", None):
        from priorguard.models.factored import fit_factored

        if output_names is None:
            raise ValueError("a model with `parents` needs its output names")
        return fit_factored(spec, data, fit=fit_role, key=key, feature_names=list(feature_names),
                            feature_ranges=feature_ranges, num_action_columns=num_action_columns, role=role,
                            output_names=[n.removeprefix("delta_") for n in output_names])
    if isinstance(spec, GPModel):
        from priorguard.models.gp import fit_gp

        return fit_gp(spec, data, key=key, feature_names=list(feature_names), site_prefix=role,
                      feature_ranges=feature_ranges, output_names=output_names)
    if isinstance(spec, BNNModel):
        from priorguard.models.bnn import fit_bnn

        return fit_bnn(spec, data, key=key, site_prefix=role, feature_ranges=feature_ranges,
                       feature_names=list(feature_names), output_names=output_names)
    raise TypeError(f"not a model spec: {type(spec).__name__}")


def role_inputs(spec: GPModel | BNNModel, all_features: Sequence[str]) -> tuple[int, ...]:
    """Observation columns a role's model reads (its ``features``, default all)."""
    names = list(spec.features) if spec.features is not None else list(all_features)
    return tuple(list(all_features).index(n) for n in names)


def describe(spec: Any) -> str:
    """One line: model kind, kernel or architecture, inference."""
    from priorguard.priors.kernels import describe_kernel

    if isinstance(spec, GPModel):
        return f"gp[{describe_kernel(spec.kernel)}; {spec.inference.method}]"
    if isinstance(spec, BNNModel):
        arch = "x".join(map(str, spec.hidden)) or "linear"
        extra = f"; {spec.simplicity.kind}" if spec.simplicity else ""
        speed = f"; depth<= {spec.speed.max_depth}" if spec.speed else ""
        return f"bnn[{arch} {spec.activation}{extra}{speed}; {spec.inference.method}]"
    return type(spec).__name__
