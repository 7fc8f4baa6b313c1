"""Run-time checks inside compiled code that fail loudly and still let the program be cached.

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

import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.extend.core import get_opaque_trace_state

__all__ = ["CheckFailedError", "checked_jit", "fail_if"]

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
