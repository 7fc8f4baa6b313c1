"""Proposal policies A: where candidate actions come from.

Every proposal is a small frozen module (configuration, static) plus a separate
parameter pytree, like a network and its weights:

* ``proposal.logits(params, obs[B, Ds]) -> [B, A]`` (discrete proposals);
* ``proposal.sample(params, key, obs[B, Ds], k) -> [B, K]`` (or ``[B, K, Da]``).

:class:`UniformProposal` and :class:`FixedProposal` take fixed parameters
(None, or the logits). :class:`MLPProposal` is learned with optax, by
imitation of behaviour data (:func:`fit_imitation`) or by policy gradient on
T's rewards through sampled worlds of W (:func:`fit_policy_gradient`). A
learned A alone is a learned optimiser whose goal can be pseudo-aligned; the
planners check it with T at every predicted state.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from priorguard.planners.worlds import PlanningModels

__all__ = [
    "BoxUniformProposal",
    "DiscreteProposal",
    "FixedProposal",
    "MLPProposal",
    "UniformProposal",
    "fit_imitation",
    "fit_policy_gradient",
    "sample_from_logits",
]


def sample_from_logits(
    key: PRNGKeyArray, logits: Float[Array, "B A"], k: int, *, replace: bool = False
) -> Int[Array, "B K"]:
    """Draws k actions per row from categorical logits.

    Without replacement (the default) uses the Gumbel top-k trick, so the k
    actions are distinct and drawn as by successive sampling; this needs
    ``k <= A``.

    Args:
        key: consumed.
        logits: ``[B, A]`` unnormalised log-probabilities.
        k: number of actions per row.
        replace: draw with replacement.

    Returns:
        ``[B, K]`` int32 actions.
    """
    num_actions = logits.shape[-1]
    if replace:
        return jax.random.categorical(key, logits[..., None, :], shape=logits.shape[:-1] + (k,)).astype(jnp.int32)
    if k > num_actions:
        raise ValueError(f"cannot draw k={k} distinct actions out of A={num_actions}; pass replace=True")
    gumbel = jax.random.gumbel(key, logits.shape, dtype=logits.dtype)
    return jax.lax.top_k(logits + gumbel, k)[1].astype(jnp.int32)


class DiscreteProposal(eqx.Module):
    """A categorical proposal policy over A discrete actions (abstract)."""

    num_actions: eqx.AbstractVar[int]

    @abc.abstractmethod
    def logits(self, params: Any, obs: Float[Array, "B Ds"]) -> Float[Array, "B A"]:
        """Action logits ``[B, A]`` at observations ``[B, Ds]``."""

    def probs(self, params: Any, obs: Float[Array, "B Ds"]) -> Float[Array, "B A"]:
        """Action probabilities ``[B, A]`` (differentiable in obs and params)."""
        return jax.nn.softmax(self.logits(params, obs), axis=-1)

    def sample(
        self, params: Any, key: PRNGKeyArray, obs: Float[Array, "B Ds"], k: int, *, replace: bool = False
    ) -> Int[Array, "B K"]:
        """Draws k candidate actions per state.

        Args:
            params: the proposal's parameters.
            key: consumed.
            obs: ``[B, Ds]`` observations.
            k: candidates per state.
            replace: with replacement (else distinct, needs ``k <= A``).

        Returns:
            ``[B, K]`` int32 actions.
        """
        return sample_from_logits(key, self.logits(params, obs), k, replace=replace)


class UniformProposal(DiscreteProposal):
    """Every action equally likely; ``params`` is ignored (pass None).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> a = UniformProposal(4).sample(None, jax.random.key(0), jnp.zeros((2, 3)), 4)
        >>> sorted(a[0].tolist())
        [0, 1, 2, 3]
    """

    num_actions: int = eqx.field(static=True)

    def logits(self, params: Any, obs: Float[Array, "B Ds"]) -> Float[Array, "B A"]:
        del params
        return jnp.zeros(obs.shape[:-1] + (self.num_actions,), dtype=obs.dtype)


class FixedProposal(DiscreteProposal):
    """A fixed policy: given logits, or a function of (params, obs).

    Without ``logits_fn`` the parameters *are* the logits, ``[A]`` (same at
    every state) or ``[B, A]``. With ``logits_fn``, ``logits(params, obs) =
    logits_fn(params, obs)``.

    Attributes:
        num_actions: A.
        logits_fn: optional ``(params, obs[B, Ds]) -> [B, A]`` (static).
    """

    num_actions: int = eqx.field(static=True)
    logits_fn: Callable[[Any, Array], Array] | None = eqx.field(static=True, default=None)

    def logits(self, params: Any, obs: Float[Array, "B Ds"]) -> Float[Array, "B A"]:
        if self.logits_fn is not None:
            return self.logits_fn(params, obs)
        logits = jnp.asarray(params, dtype=obs.dtype)
        return jnp.broadcast_to(logits, obs.shape[:-1] + (self.num_actions,))


class MLPProposal(DiscreteProposal):
    """A small tanh MLP policy (plain pytree parameters), learned with optax.

    Parameters are ``{"layers": [{"w", "b"}, ...], "obs_mean", "obs_scale"}``;
    the input standardisation is fixed at :meth:`init` (gradients stopped).

    Attributes:
        num_actions: A.
        obs_dim: Ds.
        hidden_sizes: widths of the hidden layers.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> policy = MLPProposal(num_actions=3, obs_dim=2, hidden_sizes=(8,))
        >>> params = policy.init(jax.random.key(0))
        >>> policy.logits(params, jnp.zeros((5, 2))).shape
        (5, 3)
    """

    num_actions: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    hidden_sizes: tuple[int, ...] = eqx.field(static=True, default=(64, 64))

    def init(self, key: PRNGKeyArray, *, obs: Float[Array, "N Ds"] | None = None, dtype: Any = None) -> dict[str, Any]:
        """Initial parameters (LeCun-normal weights, zero biases, last layer small).

        Args:
            key: consumed.
            obs: optional ``[N, Ds]`` observations to set the input standardisation.
            dtype: parameter dtype (default: JAX's default float).

        Returns:
            The parameter pytree.
        """
        dtype = jnp.zeros(()).dtype if dtype is None else jnp.dtype(dtype)
        return self._init(key, obs, dtype)

    @eqx.filter_jit  # one program (op by op it compiles one per layer and op)
    def _init(self, key: PRNGKeyArray, obs: Array | None, dtype: Any) -> dict[str, Any]:
        sizes = (self.obs_dim, *self.hidden_sizes, self.num_actions)
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for i, (layer_key, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            scale = (0.01 if i == len(sizes) - 2 else 1.0) / jnp.sqrt(fan_in)
            layers.append(
                {
                    "w": scale * jax.random.normal(layer_key, (fan_in, fan_out), dtype),
                    "b": jnp.zeros((fan_out,), dtype),
                }
            )
        if obs is None:
            mean, scale = jnp.zeros((self.obs_dim,), dtype), jnp.ones((self.obs_dim,), dtype)
        else:
            obs = jnp.asarray(obs, dtype)
            mean, scale = jnp.mean(obs, axis=0), jnp.std(obs, axis=0) + 1e-6
        return {"layers": layers, "obs_mean": mean, "obs_scale": scale}

    def logits(self, params: Any, obs: Float[Array, "B Ds"]) -> Float[Array, "B A"]:
        h = (obs - jax.lax.stop_gradient(params["obs_mean"])) / jax.lax.stop_gradient(params["obs_scale"])
        layers = params["layers"]
        for layer in layers[:-1]:
            h = jnp.tanh(h @ layer["w"] + layer["b"])
        return h @ layers[-1]["w"] + layers[-1]["b"]


class BoxUniformProposal(eqx.Module):
    """Continuous actions uniform in the box ``[low, high]``; ``params`` is ignored.

    Attributes:
        low: ``[Da]`` lower bounds.
        high: ``[Da]`` upper bounds.
    """

    low: Float[Array, " Da"]
    high: Float[Array, " Da"]

    def sample(self, params: Any, key: PRNGKeyArray, obs: Float[Array, "B Ds"], k: int) -> Float[Array, "B K Da"]:
        """Draws ``[B, K, Da]`` uniform actions (key consumed)."""
        del params
        shape = obs.shape[:-1] + (k,) + jnp.shape(self.low)
        return jax.random.uniform(key, shape, dtype=obs.dtype, minval=self.low, maxval=self.high)


def _default_optimizer() -> optax.GradientTransformation:
    return optax.adam(1e-2)


def fit_imitation(
    proposal: DiscreteProposal,
    params: Any,
    key: PRNGKeyArray,
    obs: Float[Array, "N Ds"],
    actions: Int[Array, " N"],
    *,
    num_steps: int = 500,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
) -> tuple[Any, Float[Array, " num_steps"]]:
    """Behaviour cloning: minimise the cross-entropy of behaviour actions.

    Args:
        proposal: a discrete proposal with trainable ``params``.
        params: initial parameters.
        key: consumed (minibatch draws).
        obs: ``[N, Ds]`` train-split observations.
        actions: ``[N]`` behaviour actions there.
        num_steps: optimiser steps.
        batch_size: minibatch size (with replacement).
        optimizer: optax optimiser (default ``optax.adam(1e-2)``).

    Returns:
        ``(params, losses [num_steps])``.
    """
    optimizer = _default_optimizer() if optimizer is None else optimizer
    actions = jnp.asarray(actions, jnp.int32)

    def loss_fn(p: Any, batch_obs: Array, batch_actions: Array) -> Array:
        logits = proposal.logits(p, batch_obs)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch_actions))

    @jax.jit
    def train(params: Any, key: PRNGKeyArray, obs: Array, actions: Array) -> tuple[Any, Array]:
        def step(carry: tuple[Any, Any], step_key: PRNGKeyArray) -> tuple[tuple[Any, Any], Array]:
            p, opt_state = carry
            idx = jax.random.randint(step_key, (batch_size,), 0, obs.shape[0])
            loss, grads = jax.value_and_grad(loss_fn)(p, obs[idx], actions[idx])
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, num_steps))
        return params, losses

    return train(params, key, obs, actions)


def fit_policy_gradient(
    proposal: DiscreteProposal,
    params: Any,
    key: PRNGKeyArray,
    models: PlanningModels,
    start_obs: Float[Array, "N Ds"],
    *,
    num_steps: int = 300,
    horizon: int = 1,
    batch_size: int = 256,
    discount: float = 1.0,
    entropy_coef: float = 0.01,
    optimizer: optax.GradientTransformation | None = None,
) -> tuple[Any, Float[Array, " num_steps"]]:
    """REINFORCE on T's rewards, rolling out through sampled worlds of W.

    Each trajectory starts at a train-split state, follows one world drawn at
    random, and collects ``T(s_{t+1})`` at every step (plus ``I(s_H)`` at the
    end when I is given). The baseline is the minibatch mean return.

    Args:
        proposal: a discrete proposal with trainable ``params``.
        params: initial parameters.
        key: consumed.
        models: planning models (discrete actions).
        start_obs: ``[N, Ds]`` train-split start observations.
        num_steps: optimiser steps.
        horizon: rollout length.
        batch_size: trajectories per step.
        discount: reward discount.
        entropy_coef: weight of the entropy bonus.
        optimizer: optax optimiser (default ``optax.adam(1e-2)``).

    Returns:
        ``(params, mean_return [num_steps])``.
    """
    if not models.is_discrete:
        raise ValueError("fit_policy_gradient needs discrete actions")
    optimizer = _default_optimizer() if optimizer is None else optimizer

    def loss_fn(
        p: Any, models: PlanningModels, rollout_key: PRNGKeyArray, obs0: Array, worlds: Array
    ) -> tuple[Array, Array]:
        def move(
            carry: tuple[Array, Array], step_key: PRNGKeyArray
        ) -> tuple[tuple[Array, Array], tuple[Array, Array, Array]]:
            obs, alive = carry
            logits = proposal.logits(p, obs)
            action = jax.random.categorical(step_key, jax.lax.stop_gradient(logits))
            log_prob = jax.nn.log_softmax(logits)[jnp.arange(obs.shape[0]), action]
            entropy = -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), axis=-1)
            next_obs = models.next_state_in_worlds(obs, action, worlds)
            reward = alive * models.terminal_value_in_worlds(next_obs, worlds)
            # steps after a predicted episode end earn nothing; their log-probs still enter the
            # score-function sum, with the same (stop-gradient) return: unbiased, a little noisier
            alive = alive * models.continuation_in_worlds(next_obs, worlds)
            return (next_obs, alive), (log_prob, entropy, reward)

        alive0 = jnp.ones(obs0.shape[:1], obs0.dtype)
        (last_obs, alive), (log_probs, entropies, rewards) = jax.lax.scan(
            move, (obs0, alive0), jax.random.split(rollout_key, horizon))
        weights = discount ** jnp.arange(horizon, dtype=rewards.dtype)
        returns = jnp.sum(weights[:, None] * rewards, axis=0)
        returns = returns + discount**horizon * alive * models.instrumental_value_in_worlds(last_obs, worlds)
        returns = jax.lax.stop_gradient(returns)
        advantage = returns - jnp.mean(returns)
        loss = -jnp.mean(advantage * jnp.sum(log_probs, axis=0)) - entropy_coef * jnp.mean(entropies)
        return loss, jnp.mean(returns)

    @jax.jit
    def train(params: Any, key: PRNGKeyArray, models: PlanningModels, start_obs: Array) -> tuple[Any, Array]:
        def step(carry: tuple[Any, Any], step_key: PRNGKeyArray) -> tuple[tuple[Any, Any], Array]:
            p, opt_state = carry
            batch_key, world_key, rollout_key = jax.random.split(step_key, 3)
            idx = jax.random.randint(batch_key, (batch_size,), 0, start_obs.shape[0])
            worlds = jax.random.randint(world_key, (batch_size,), 0, models.num_worlds)
            grads, mean_return = jax.grad(loss_fn, has_aux=True)(p, models, rollout_key, start_obs[idx], worlds)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), mean_return

        (params, _), returns = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, num_steps))
        return params, returns

    return train(params, key, models, start_obs)
