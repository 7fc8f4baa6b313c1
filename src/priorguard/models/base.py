"""The one contract every fitted model honours: :class:`Posterior`.

Shapes used throughout:
    N: number of query points.
    D: input dimension (features the model sees).
    O: output dimension (1 for T and I; state dimension for W).
    S: number of posterior function draws ("worlds").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


class Prediction(NamedTuple):
    """Posterior predictive moments at N query points.

    Attributes:
        mean: ``[N, O]`` predictive mean.
        epistemic_var: ``[N, O]`` variance of the latent function (what more
            data would remove).
        aleatoric_var: ``[N, O]`` observation-noise variance.
    """

    mean: Float[Array, "N O"]
    epistemic_var: Float[Array, "N O"]
    aleatoric_var: Float[Array, "N O"]

    @property
    def total_var(self) -> Float[Array, "N O"]:
        return self.epistemic_var + self.aleatoric_var


class FunctionDraws(eqx.Module):
    """S jointly consistent draws of a latent function, callable anywhere.

    ``params`` is a pytree whose leaves all carry a leading axis of size S;
    ``apply_fn(params_one_draw, x[N, D]) -> [N, O]`` evaluates one draw. A draw
    is a *function*, not a set of values: evaluating the same draw at the same
    input twice gives the same output, so one planner rollout can follow one
    sampled world.

    Example:
        >>> import jax.numpy as jnp
        >>> draws = FunctionDraws(params={"w": jnp.arange(3.0)[:, None, None]},
        ...                       apply_fn=lambda p, x: x @ p["w"])
        >>> draws(jnp.ones((2, 1))).shape
        (3, 2, 1)
        >>> float(draws.one(2, jnp.ones((1, 1)))[0, 0])
        2.0
    """

    params: Any
    apply_fn: Callable[[Any, Float[Array, "N D"]], Float[Array, "N O"]] = eqx.field(static=True)

    @property
    def num_draws(self) -> int:
        return jax.tree_util.tree_leaves(self.params)[0].shape[0]

    def __call__(self, x: Float[Array, "N D"]) -> Float[Array, "S N O"]:
        """Evaluates every draw at ``x`` (in batches of draws when ``S * N`` is large)."""
        batch = _draw_batch(self.num_draws, x.shape[-2])
        if batch is None:
            return jax.vmap(self.apply_fn, in_axes=(0, None))(self.params, x)
        out = jax.lax.map(lambda p: jax.vmap(self.apply_fn, in_axes=(0, None))(p, x), _chunks(self.params, batch))
        return out.reshape(-1, *out.shape[2:])[: self.num_draws]

    def one(self, index: Int[Array, ""] | int, x: Float[Array, "N D"]) -> Float[Array, "N O"]:
        """Evaluates draw ``index`` (may be a traced integer) at ``x``."""
        params = jax.tree_util.tree_map(lambda leaf: leaf[index], self.params)
        return self.apply_fn(params, x)

    def per_draw(self, x: Float[Array, "S N D"]) -> Float[Array, "S N O"]:
        """Evaluates draw s at its own inputs ``x[s]`` (one world per rollout)."""
        batch = _draw_batch(self.num_draws, x.shape[-2])
        if batch is None:
            return jax.vmap(self.apply_fn)(self.params, x)
        out = jax.lax.map(lambda px: jax.vmap(self.apply_fn)(*px), _chunks((self.params, x), batch))
        return out.reshape(-1, *out.shape[2:])[: self.num_draws]


#: Above this many rows times draws, draws are evaluated a batch at a time (a ``lax.map`` over
#: chunks of draws, each chunk vmapped): a GP
#: draw's random features take ``rows x features x outputs`` floats, and evaluating every draw
#: at once held 4 GB on assistant's audit (1000 states x 2 candidates x 16 worlds x 512 x 15).
DRAW_BATCH_ROWS = 4096


def _chunks(tree: Any, batch: int) -> Any:
    """Leading axis ``S`` -> ``[ceil(S / batch), batch, ...]`` (the last chunk padded with draw 0)."""
    def one(leaf: Array) -> Array:
        pad = -leaf.shape[0] % batch
        if pad:
            leaf = jnp.concatenate([leaf, jnp.broadcast_to(leaf[:1], (pad, *leaf.shape[1:]))])
        return leaf.reshape(-1, batch, *leaf.shape[1:])

    return jax.tree_util.tree_map(one, tree)


def _draw_batch(num_draws: int, rows: int) -> int | None:
    """The draws per batch, or None to evaluate all at once (small problems: the planners' own)."""
    if num_draws * rows <= DRAW_BATCH_ROWS:
        return None
    return max(1, DRAW_BATCH_ROWS // max(rows, 1))


@runtime_checkable
class Posterior(Protocol):
    """What a fitted T, I or W model offers the planners and the analysis.

    Every implementation (exact GP, sparse GP, BNN under NUTS/SVI, ensembles,
    structure-averaged mixtures) provides exactly this.
    """

    @property
    def input_dim(self) -> int: ...

    @property
    def output_dim(self) -> int: ...

    def predict(self, x: Float[Array, "N D"]) -> Prediction:
        """Predictive mean, epistemic and aleatoric variance at ``x``."""
        ...

    def sample_functions(self, key: PRNGKeyArray, n: int) -> FunctionDraws:
        """``n`` jointly consistent latent-function draws."""
        ...

    def log_predictive_density(
        self, x: Float[Array, "N D"], y: Float[Array, "N O"]
    ) -> Float[Array, " N"]:
        """Pointwise log p(y_i | x_i, data), summed over outputs (for LOO/ELPD)."""
        ...

    def to_datatree(self) -> Any:
        """An ``xarray.DataTree`` for ArviZ (posterior, sample_stats, ...)."""
        ...


class Data(eqx.Module):
    """Supervised data: inputs ``x [N, D]`` and targets ``y [N, O]``."""

    x: Float[Array, "N D"]
    y: Float[Array, "N O"]

    def __check_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 2 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"Data needs x [N, D] and y [N, O] with the same N; got x{tuple(self.x.shape)}"
                f" and y{tuple(self.y.shape)}"
            )

    @property
    def n(self) -> int:
        return self.x.shape[0]


def as_data(x: Any, y: Any, dtype: Any = jnp.float64) -> Data:
    """Builds :class:`Data`, promoting a 1-D ``y`` to ``[N, 1]``."""
    x = jnp.asarray(x, dtype=dtype)
    y = jnp.asarray(y, dtype=dtype)
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    return Data(x=x, y=y)
