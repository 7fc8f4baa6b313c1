"""Compile once: shape buckets, the program cache, and checks that keep programs cacheable.

Three things every compiled path of priorguard shares:

* **Shape buckets** (:func:`shape_bucket`): few distinct array sizes, so compiled
  programs are shared across nearby sizes.
* **The program cache** (:func:`cached_program`, :func:`count_trace`,
  :data:`TRACE_COUNTS`). ``MCMC.run`` and ``svi.run`` build fresh closures, so
  every call compiles again. Programs are built once per *model structure*
  (the caller keys them) and take the data as traced arguments, so a later fit
  whose arrays have the same shapes and dtypes hits JAX's jit cache and
  compiles nothing. Every traced body calls :func:`count_trace`; tests read
  :data:`TRACE_COUNTS` to prove a second fit traced nothing.
* **Run-time checks inside compiled code** (:func:`fail_if`, :func:`checked_jit`)
  that fail loudly and still let the program be cached.
  ``equinox.error_if`` raises through a host callback, and JAX never writes a
  program with a host callback to the persistent compilation cache: every new
  process compiled such a program again (the MCTS actors and the adversarial
  search, 3-5 s each, every run). :func:`fail_if` is ``error_if`` in ordinary
  code. At the top level of a function compiled by :func:`checked_jit` it
  becomes a flag that the compiled function returns beside its result, and the
  check is raised on the host after the call: no callback, so the program is
  cached like any other. A :func:`fail_if` under an inner transformation there
  (``vmap``, ``scan``, a nested ``jit``) cannot hand its flag out and stays an
  ``error_if``: always checked, only not cached.

  The switch is one explicit context, set only while :func:`checked_jit` traces.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.extend.core import get_opaque_trace_state

__all__ = [
    "TRACE_COUNTS",
    "CheckFailedError",
    "cached_program",
    "checked_jit",
    "count_trace",
    "fail_if",
    "shape_bucket",
]


# --------------------------------------------------------------------------------------
# Shape buckets
# --------------------------------------------------------------------------------------


def shape_bucket(n: int, *, direction: Literal["up", "down"], per_octave: int = 8, exact_below: int = 64) -> int:
    """``n`` rounded to a bucket: a multiple of ``2^(floor(log2 n) + 1) / (2 * per_octave)``.

    There are ``per_octave`` buckets between consecutive powers of two, so
    rounding changes ``n`` by less than ``1 / per_octave`` of it.

    Args:
        n: the size (>= 0).
        direction: ``"up"`` (pad to the bucket) or ``"down"`` (drop down to it).
        per_octave: buckets per octave, a power of two.
        exact_below: sizes up to this are returned as they are.

    Returns:
        The bucket size.

    Example:
        >>> [shape_bucket(n, direction="up") for n in (64, 65, 100, 129)]
        [64, 72, 104, 144]
        >>> [shape_bucket(n, direction="down") for n in (65, 100, 600)]
        [64, 96, 576]
        >>> [shape_bucket(n, direction="up", per_octave=2, exact_below=0) for n in (1, 3, 5, 7, 9, 13)]
        [1, 3, 6, 8, 12, 16]
    """
    if per_octave < 1 or per_octave & (per_octave - 1):
        raise ValueError(f"per_octave must be a power of two, got {per_octave}")
    if n <= max(exact_below, 1):
        return n
    step = 2 ** max(0, n.bit_length() - per_octave.bit_length())
    if direction == "up":
        return -(-n // step) * step
    return (n // step) * step


# --------------------------------------------------------------------------------------
# The program cache
# --------------------------------------------------------------------------------------

#: Program name -> number of times JAX traced it (a Python side effect, so it
#: only moves when something is traced, i.e. compiled).
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

_CACHE: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


def count_trace(name: str) -> None:
    """Records that program ``name`` is being traced (call inside traced code)."""
    TRACE_COUNTS[name] += 1


def cached_program(key: Hashable, build: Callable[[], Any]) -> Any:
    """The program for ``key``, built by ``build()`` on first use (LRU, 64 entries)."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    program = build()
    with _CACHE_LOCK:
        _CACHE[key] = program
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return program


# --------------------------------------------------------------------------------------
# Checks inside compiled code
# --------------------------------------------------------------------------------------


T = TypeVar("T")


class CheckFailedError(RuntimeError):
    """A :func:`fail_if` check failed in a function compiled by :func:`checked_jit`."""


@dataclass
class _Frame:
    """The checks met at the top level of one :func:`checked_jit` trace."""

    trace: Any
    flags: list[Any] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


_FRAME: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar("priorguard_check_frame", default=None)


def _trace_state() -> Any:
    return get_opaque_trace_state(convention="nnx")


def fail_if(x: T, pred: Any, msg: str) -> T:
    """Returns ``x``; raises at run time (with ``msg``) when any element of ``pred`` is true.

    Args:
        x: the value to pass through (a pytree of arrays).
        pred: boolean array; the check fails when any element is true.
        msg: the error message.

    Returns:
        ``x`` unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> f = checked_jit(lambda v: fail_if(v, v < 0, "negative input"))
        >>> float(f(jnp.asarray(2.0)))
        2.0
        >>> try:
        ...     f(jnp.asarray(-1.0))
        ... except CheckFailedError as e:
        ...     print(e)
        negative input
    """
    frame = _FRAME.get()
    if frame is not None and _trace_state() == frame.trace:
        frame.flags.append(jnp.any(pred))
        frame.messages.append(msg)
        return x
    return eqx.error_if(x, pred, msg)


def checked_jit(fun: Callable[..., T]) -> Callable[..., T]:
    """``equinox.filter_jit`` whose top-level :func:`fail_if` checks raise on the host after the call.

    Arrays are traced and everything else is static, as with ``filter_jit``.
    The call waits for the result (to read the flags) and raises
    :class:`CheckFailedError` with the first failed check's message.
    """

    @eqx.filter_jit
    def run(*args: Any, **kwargs: Any) -> tuple[T, Any, tuple[str, ...]]:
        frame = _Frame(_trace_state())
        token = _FRAME.set(frame)
        try:
            out = fun(*args, **kwargs)
        finally:
            _FRAME.reset(token)
        flags = jnp.stack(frame.flags) if frame.flags else jnp.zeros((0,), bool)
        return out, flags, tuple(frame.messages)

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> T:
        out, flags, messages = run(*args, **kwargs)
        failed = np.flatnonzero(np.asarray(flags))
        if failed.size:
            raise CheckFailedError(messages[int(failed[0])])
        return out

    call.lower = run.lower  # type: ignore[attr-defined]  # the compiled program, for inspection
    return call
