"""Uncertainty on fixed probe sets: does a model's epistemic std tell states it never saw from
states like its training data, whichever states the planner happened to visit?

The probe set is seed-determined: the deploy-split states that the behaviour, oracle and
random policies reach (``data.deploy_episodes`` episodes each) and whose inputs to the
model never occur in its training inputs (deploy-only); the reference set is the
held-out train episodes' distinct states. ``<role>_ood_auroc`` is the AUROC of the
epistemic std for telling them apart (1: every deploy-only state is more uncertain than
every train state; 0.5: no better than chance), with the probe counts beside it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.analysis.diagnostics import auroc
from priorguard.experiments.context import RunContext
from priorguard.experiments.data import Transitions, collect
from priorguard.models.base import Posterior
from priorguard.models.roles import role_inputs

#: The policies whose deploy-split states make the probe set.
PROBE_POLICIES = ("behaviour", "oracle", "random")


def probe_states(ctx: RunContext, key: Any) -> np.ndarray:
    """Every state the probe policies reach on the deploy split: ``[M, F]``."""
    names = [p for p in PROBE_POLICIES if p in ctx.source.policy_names()]
    states = []
    for i, name in enumerate(names):
        ep = collect(ctx.source, "deploy", ctx.spec.data.deploy_episodes, name, jax.random.fold_in(key, i))
        states += [ep.obs, ep.next_obs]
    return np.concatenate(states).astype(np.float64)


def ood_scores(ctx: RunContext, posteriors: dict[str, Posterior], train_states: np.ndarray, cal: Transitions,
               probes: np.ndarray) -> dict[str, Any]:
    """``<role>_ood_auroc``, ``<role>_ood_probes`` and ``<role>_ood_reference`` for T and I.

    Args:
        train_states: the states T (and I) were fitted at, all feature columns ``[N, F]``.
        cal: the held-out train episodes (the reference states).
        probes: :func:`probe_states`.
    """
    out: dict[str, Any] = {}
    for role in ("terminal", "instrumental"):
        spec = getattr(ctx.spec, role)
        if spec is None or role not in posteriors:
            continue
        cols = np.asarray(role_inputs(spec, ctx.features))
        # one dtype on both sides: a float32 row's bytes never equal the same float64 row's
        seen = {row.tobytes() for row in np.ascontiguousarray(train_states[:, cols], dtype=np.float64)}
        unique = np.unique(probes[:, cols], axis=0)
        novel = np.asarray([row for row in unique if row.tobytes() not in seen]).reshape(-1, len(cols))
        reference = np.unique(cal.next_obs[:, cols].astype(np.float64), axis=0)
        out[f"{role}_ood_probes"], out[f"{role}_ood_reference"] = int(len(novel)), int(len(reference))
        if len(novel) == 0 or len(reference) == 0:
            out[f"{role}_ood_auroc"] = None
            out[f"{role}_ood_auroc_na"] = ("no deploy state has inputs unseen in training" if len(novel) == 0
                                           else "no held-out train state")
            continue
        post = posteriors[role]
        std = [np.sqrt(np.asarray(post.predict(jnp.asarray(x, jnp.float64)).epistemic_var)).mean(axis=-1)
               for x in (novel, reference)]
        out[f"{role}_ood_auroc"] = auroc(std[0], std[1])
    return out
