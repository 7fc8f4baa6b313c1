"""Small hand-made worlds (FunctionDraws with known closed forms) for planner tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.models.base import FunctionDraws
from priorguard.planners import PlanningModels


def _linear(params, x):
    return x @ params["w"]


def linear_draws(weights) -> FunctionDraws:
    """``x @ w_s`` with ``weights [S, D, O]`` (one shared apply_fn: jitted planners reuse compiles)."""
    return FunctionDraws(params={"w": jnp.asarray(weights)}, apply_fn=_linear)


def standardised(values) -> np.ndarray:
    """Values shifted and scaled to mean 0 and population std 1."""
    values = np.asarray(values, dtype=np.float64)
    return (values - values.mean()) / values.std()


def _table(params, x):
    table = params["table"]
    ids = jnp.clip(jnp.round(x[:, 0]).astype(jnp.int32), 0, table.shape[0] - 1)
    inside = (x[:, 0] >= 0) & (x[:, 0] < table.shape[0])
    return jnp.where(inside, table[ids], 0.0)[:, None]


def table_draws(tables) -> FunctionDraws:
    """A lookup table on a rounded integer node id: ``tables [S, n_ids]`` -> ``[N, 1]`` (0 outside)."""
    return FunctionDraws(params={"table": jnp.asarray(tables)}, apply_fn=_table)


def tree_world(num_worlds: int, num_actions: int) -> FunctionDraws:
    """Node ids of a complete tree: action a at node i leads to node ``A * i + a + 1``.

    W sees ``concat(obs=[id], onehot(a))`` and predicts the delta ``(A - 1) * id + a + 1``.
    """
    w = np.zeros((num_worlds, 1 + num_actions, 1))
    w[:, 0, 0] = num_actions - 1
    w[:, 1:, 0] = np.arange(1, num_actions + 1)
    return linear_draws(w)


def tree_models(tables, num_actions: int) -> PlanningModels:
    """Discrete tree-structured models: T is a per-world table over node ids."""
    tables = np.asarray(tables, dtype=np.float64)
    return PlanningModels(
        world=tree_world(tables.shape[0], num_actions),
        terminal=table_draws(tables),
        terminal_columns=(0,),
        num_actions=num_actions,
    )


def mlp_draws(key, num_worlds: int, in_dim: int, out_dim: int, hidden: int = 16, scale: float = 1.0) -> FunctionDraws:
    """Random tanh MLPs, one per world."""
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (num_worlds, in_dim, hidden)) / np.sqrt(in_dim),
        "w2": scale * jax.random.normal(k2, (num_worlds, hidden, out_dim)) / np.sqrt(hidden),
    }
    return FunctionDraws(params=params, apply_fn=_mlp)


def _mlp(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]
