"""Kernel kinds added from outside the package: their compiled Gram matrix and random features.

A new kind is declared twice, once per side: :func:`priorguard.priors.register_kernel`
(its spec: hyperparameters, supports, flops) and :func:`register_kernel_ops` here (how a
GP computes it). Both tables it writes are the ones the built-in kinds live in
(:data:`~priorguard.models.gp.kinds.KIND_OPS`, :data:`~priorguard.models.gp.features.FEATURES`).
"""

from __future__ import annotations

from priorguard.models.gp.features import FEATURES, RandomFeatures
from priorguard.models.gp.kernels import KIND_OPS, KindOps
from priorguard.priors.kernels import KERNELS


def register_kernel_ops(kind: str, ops: KindOps, features: RandomFeatures) -> None:
    """Adds the compiled side of a registered kernel kind.

    Args:
        kind: a kind already declared with :func:`priorguard.priors.register_kernel`.
        ops: its ``gram`` and ``diag`` (see :class:`~priorguard.models.gp.kernels.KindOps`).
        features: its random features, for pathwise function draws (see
            :class:`~priorguard.models.gp.features.RandomFeatures`).

    Raises:
        ValueError: the kind is not declared, or its compiled side is registered already.
    """
    if kind not in KERNELS:
        raise ValueError(f"kernel kind {kind!r} is not declared: call priorguard.priors.register_kernel first")
    if kind in KIND_OPS:
        raise ValueError(f"kernel kind {kind!r} already has its compiled side")
    KIND_OPS[kind] = ops
    FEATURES[kind] = features
