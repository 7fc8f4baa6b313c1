"""Shared types of the environment suite: `EnvInfo`, the `Dynamics` contract, argument checks.

Every environment is written once, as a `Dynamics`: a frozen, hashable
configuration object whose methods are pure functions of a flat float32 state
vector and take an array namespace ``xp`` as their first argument. Three
namespaces run them:

- `SCALAR` (Python floats and the ``math`` module): the gymnasium environment
  steps with it, because per-step numpy or JAX calls on 0-d arrays cost
  microseconds each; states and observations leave it as float32 numpy arrays;
- ``jax.numpy``: `priorguard.envs.EnvModel` (jit-able, vmappable), in float32;
- ``numpy`` also works (one state as a float32 array; slower than `SCALAR`).

So the code that defines an environment is shared, and the tests check that
the backends agree state by state. Randomness enters only as explicit
uniform ``noise`` vectors drawn by the caller (``np_random`` in gymnasium, a
JAX key in the model).

Shapes: ``S`` is the length of the hidden state vector, ``F`` the number of
observation features.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Literal

import numpy as np

__all__ = ["SCALAR", "SPLITS", "Dynamics", "EnvInfo"]

SPLITS: tuple[str, ...] = ("train", "deploy")
"""The two splits every environment offers."""


@dataclasses.dataclass(frozen=True)
class OutcomeFlag:
    """An outcome an environment reports beyond value and catastrophe, as a bool in each step's ``info``.

    Runs report, for the planner, the planner without vetoes, A alone and the oracle, the
    fraction of deploy episodes in which the flag was ever set (``<arm><metric>``); generic
    code never names an environment's outcomes.

    Attributes:
        key: the ``info`` key (and the key of the per-episode flags the runner's evaluation returns).
        metric: the per-run metric name, e.g. ``"tampering_rate"``.
        label: a short label for tables and plots.
        hides_truth: where the flag is set, what the rater sees may differ from the truth;
            runs then also report ``<arm>rater_gap`` (the rater's return minus the true return).
    """

    key: str
    metric: str
    label: str
    hides_truth: bool = False


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """Static description of a registered environment, available without stepping it.

    Attributes:
        env_id: Registered gymnasium id, e.g. ``"priorguard/CoinShift-v1"``.
        feature_names: Names of the observation columns, in order.
        feature_ranges: ``{name: (low, high)}``; the observation Box bounds.
        action_kind: ``"discrete"`` or ``"continuous"``.
        num_actions: Number of discrete actions (``None`` when continuous).
        action_names: Names of the discrete actions (``None`` when continuous).
        action_low: Lower bounds of a continuous action, float32 ``[A]``
            (``None`` when discrete).
        action_high: Upper bounds of a continuous action, float32 ``[A]``
            (``None`` when discrete).
        horizon: Maximum number of steps of an episode (the env truncates there).
        version: The ``-vN`` version of the id.
        splits: The accepted ``split`` values.
        description: One line on what the environment tests.
        outcome_flags: Outcomes the environment reports in ``info`` beyond value and
            catastrophe (see `OutcomeFlag`).
        has_catastrophes: Whether any state is catastrophic (False: veto precision and
            recall have nothing to measure).
    """

    env_id: str
    feature_names: tuple[str, ...]
    feature_ranges: dict[str, tuple[float, float]]
    action_kind: Literal["discrete", "continuous"]
    num_actions: int | None
    action_names: tuple[str, ...] | None
    action_low: np.ndarray | None = dataclasses.field(compare=False)
    action_high: np.ndarray | None = dataclasses.field(compare=False)
    horizon: int
    version: int
    splits: tuple[str, ...] = SPLITS
    description: str = ""
    outcome_flags: tuple[OutcomeFlag, ...] = ()
    has_catastrophes: bool = True

    @property
    def num_features(self) -> int:
        """Number of observation columns ``F``."""
        return len(self.feature_names)

    @property
    def action_input_names(self) -> tuple[str, ...]:
        """Names of the action columns a world model W sees after its features: the one-hot
        discrete actions by `action_names`, or ``action_0 ..`` for a continuous action."""
        if self.action_names is not None:
            return tuple(self.action_names)
        return tuple(f"action_{i}" for i in range(len(self.action_low)))


# --------------------------------------------------------------------------- checks


def check_split(split: object) -> str:
    """Return ``split`` if it is ``"train"`` or ``"deploy"``.

    Args:
        split: Candidate split.

    Returns:
        The split.

    Raises:
        ValueError: If ``split`` is anything else.
    """
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return split


def check_int(name: str, value: object, *, low: int, high: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[low, high]``.

    Args:
        name: Argument name, used in the error message.
        value: Candidate value (``bool`` is rejected).
        low: Smallest allowed value.
        high: Largest allowed value.

    Returns:
        The value as a Python ``int``.

    Raises:
        ValueError: If the value is not an integer or is out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"{name} must be an integer in [{low}, {high}]; got {value!r} "
            f"of type {type(value).__name__}"
        )
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}]; got {int(value)}")
    return int(value)


def check_float(name: str, value: object, *, low: float, high: float) -> float:
    """Return ``value`` as a ``float`` if it is a real number in ``[low, high]``.

    Args:
        name: Argument name, used in the error message.
        value: Candidate value (``bool`` is rejected).
        low: Smallest allowed value.
        high: Largest allowed value.

    Returns:
        The value as a Python ``float``.

    Raises:
        ValueError: If the value is not a real number or is out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ValueError(
            f"{name} must be a number in [{low}, {high}]; got {value!r} "
            f"of type {type(value).__name__}"
        )
    if not low <= float(value) <= high:  # also rejects NaN
        raise ValueError(f"{name} must be a number in [{low}, {high}]; got {float(value)}")
    return float(value)


def check_render_mode(render_mode: object) -> str | None:
    """Return ``render_mode`` if it is ``None`` or ``"ansi"``.

    Args:
        render_mode: Candidate render mode.

    Returns:
        The render mode.

    Raises:
        ValueError: For any other value.
    """
    if render_mode is not None and render_mode != "ansi":
        raise ValueError(f"render_mode must be None or 'ansi'; got {render_mode!r}")
    return render_mode


# --------------------------------------------------------------------------- xp helpers


class _ScalarOps:
    """The part of the ``numpy`` API the dynamics use, over Python scalars.

    States are Python lists of floats here (``array.tolist()``); `pack` turns
    results back into float32 numpy arrays. Booleans are Python ``bool`` (so
    ``&`` and ``|`` are logical).
    """

    float32 = float
    int32 = int
    sin = staticmethod(math.sin)
    cos = staticmethod(math.cos)
    floor = staticmethod(math.floor)
    abs = staticmethod(abs)
    minimum = staticmethod(min)
    maximum = staticmethod(max)

    @staticmethod
    def where(condition: Any, if_true: Any, if_false: Any) -> Any:
        return if_true if condition else if_false

    @staticmethod
    def logical_and(a: Any, b: Any) -> bool:
        return bool(a) and bool(b)

    @staticmethod
    def logical_not(a: Any) -> bool:
        return not a

    @staticmethod
    def mod(a: float, b: float) -> float:
        return a % b

    @staticmethod
    def asarray(value: Any, dtype: Any = None) -> Any:
        return value if dtype is None else dtype(value)

    def __repr__(self) -> str:
        return "SCALAR"


SCALAR = _ScalarOps()
"""Array namespace over Python scalars: the gymnasium environments' fast backend."""


def pack(xp: Any, values: list[Any]) -> Any:
    """Stack scalars (float, bool or 0-d arrays) into a float32 vector.

    Args:
        xp: `SCALAR`, ``numpy`` or ``jax.numpy``.
        values: Scalars to stack.

    Returns:
        float32 array ``[len(values)]`` (numpy for `SCALAR`).
    """
    if xp is SCALAR or xp is np:
        return np.array(values, dtype=np.float32)
    return xp.stack([xp.asarray(v, dtype=xp.float32) for v in values])


def keep_if(xp: Any, condition: Any, state: Any, otherwise: Any) -> Any:
    """Return ``state`` (as a float32 vector) where ``condition`` holds, else ``otherwise``.

    Args:
        xp: `SCALAR`, ``numpy`` or ``jax.numpy``.
        condition: Bool scalar.
        state: The current state ``[S]`` (a list for `SCALAR`).
        otherwise: The new state ``[S]``, as returned by `pack`.

    Returns:
        float32 ``[S]``.
    """
    if xp is SCALAR:
        return np.array(state, dtype=np.float32) if condition else otherwise
    return xp.where(condition, state, otherwise)


def as_f32(xp: Any, value: Any) -> Any:
    """Cast a scalar to float32 (a Python float for `SCALAR`)."""
    return xp.asarray(value, dtype=xp.float32)


def wrap_angle(xp: Any, angle: Any) -> Any:
    """Wrap an angle (radians) into ``[-pi, pi]``."""
    return xp.mod(angle + math.pi, 2.0 * math.pi) - math.pi


def uniform_index(xp: Any, u: Any, n: int) -> Any:
    """Map a uniform draw ``u`` in ``[0, 1)`` to an integer in ``{0, ..., n-1}`` (a float in JAX)."""
    return xp.minimum(xp.floor(u * n), n - 1)


# --------------------------------------------------------------------------- Dynamics


@dataclasses.dataclass(frozen=True)
class Dynamics(abc.ABC):
    """One environment's ground truth, as pure functions of a float32 state ``[S]``.

    Subclasses are frozen dataclasses (hashable, so `EnvModel` can hold them as
    a static field) whose fields are the split and size arguments; they check
    them in ``__post_init__``. Every method takes the array namespace ``xp``
    first; randomness enters only through uniform ``noise`` vectors. With
    `SCALAR`, ``state`` and ``noise`` are lists of Python floats, and states
    and observations come back as float32 numpy arrays.

    Terminal states are absorbing: `transition` leaves them unchanged, and
    `terminal_value` keeps its value there. A planner that sums
    `terminal_value` over a fixed horizon should stop summing after the first
    state where `is_terminal` holds.

    Attributes:
        split: ``"train"`` or ``"deploy"``.
    """

    split: str = "train"

    env_id: ClassVar[str]
    version: ClassVar[int] = 0
    description: ClassVar[str] = ""
    feature_names: ClassVar[tuple[str, ...]]
    state_names: ClassVar[tuple[str, ...]]
    action_kind: ClassVar[Literal["discrete", "continuous"]] = "discrete"
    action_names: ClassVar[tuple[str, ...] | None] = None
    reset_noise_size: ClassVar[int]
    sample_noise_size: ClassVar[int]
    step_noise_size: ClassVar[int] = 0
    #: Outcomes reported in ``info`` beyond value and catastrophe (see `outcomes`); runs report their rates.
    outcome_flags: ClassVar[tuple[OutcomeFlag, ...]] = ()
    #: Whether any state is catastrophic (`catastrophe` is False everywhere otherwise).
    has_catastrophes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_split(self.split)

    # --- static metadata -------------------------------------------------------------

    @property
    def state_size(self) -> int:
        """Length ``S`` of the hidden state vector."""
        return len(self.state_names)

    @property
    def num_features(self) -> int:
        """Number ``F`` of observation features."""
        return len(self.feature_names)

    @property
    def num_actions(self) -> int | None:
        """Number of discrete actions, or ``None`` for a continuous action."""
        return None if self.action_names is None else len(self.action_names)

    @property
    def action_low(self) -> np.ndarray | None:
        """Lower bound of a continuous action ``[A]``, or ``None`` when discrete."""
        return None

    @property
    def action_high(self) -> np.ndarray | None:
        """Upper bound of a continuous action ``[A]``, or ``None`` when discrete."""
        return None

    @property
    @abc.abstractmethod
    def horizon(self) -> int:
        """Maximum number of steps of an episode."""

    @abc.abstractmethod
    def feature_ranges(self) -> dict[str, tuple[float, float]]:
        """Return ``{feature name: (low, high)}`` for this configuration."""

    def info(self) -> EnvInfo:
        """Return the `EnvInfo` of this configuration."""
        low, high = self.action_low, self.action_high
        if low is not None:
            low, high = low.copy(), high.copy()
            low.flags.writeable = False
            high.flags.writeable = False
        return EnvInfo(
            env_id=self.env_id,
            feature_names=self.feature_names,
            feature_ranges=self.feature_ranges(),
            action_kind=self.action_kind,
            num_actions=self.num_actions,
            action_names=self.action_names,
            action_low=low,
            action_high=high,
            horizon=self.horizon,
            version=self.version,
            description=self.description,
            outcome_flags=self.outcome_flags,
            has_catastrophes=self.has_catastrophes,
        )

    # --- ground truth ----------------------------------------------------------------

    @abc.abstractmethod
    def initial_state(self, xp: Any, noise: Any) -> Any:
        """Draw a start state of this split.

        Args:
            xp: `SCALAR`, ``numpy`` or ``jax.numpy``.
            noise: Uniform ``[0, 1)`` float32 ``[reset_noise_size]``.

        Returns:
            float32 state ``[S]``.
        """

    @abc.abstractmethod
    def transition(self, xp: Any, state: Any, action: Any, noise: Any) -> Any:
        """Next state from a state and an action.

        Args:
            xp: `SCALAR`, ``numpy`` or ``jax.numpy``.
            state: float32 ``[S]``.
            action: Integer scalar (discrete) or float32 ``[A]`` (continuous).
            noise: Uniform float32 ``[step_noise_size]`` (unused when 0).

        Returns:
            float32 next state ``[S]``.
        """

    @abc.abstractmethod
    def observe(self, xp: Any, state: Any) -> Any:
        """Observation of a state: float32 ``[F]`` with columns `feature_names`."""

    @abc.abstractmethod
    def terminal_value(self, xp: Any, state: Any) -> Any:
        """True per-state value (the objective); float32 scalar."""

    def rater_value(self, xp: Any, state: Any) -> Any:
        """What a rater watching the observation would say; float32 scalar.

        Equal to `terminal_value` unless the environment is about tampering
        with what the rater sees.
        """
        return self.terminal_value(xp, state)

    def outcomes(self, xp: Any, state: Any) -> dict[str, Any]:
        """The `outcome_flags` of a state: ``{flag.key: bool scalar}`` (empty unless the env declares flags)."""
        return {}

    @abc.abstractmethod
    def catastrophe(self, xp: Any, state: Any) -> Any:
        """Whether the state is catastrophic; bool scalar."""

    @abc.abstractmethod
    def is_terminal(self, xp: Any, state: Any) -> Any:
        """Whether the episode ends in this state; bool scalar."""

    @abc.abstractmethod
    def random_state(self, xp: Any, noise: Any) -> Any:
        """A broad random state over the feature ranges (for audits).

        Args:
            xp: `SCALAR`, ``numpy`` or ``jax.numpy``.
            noise: Uniform float32 ``[sample_noise_size]``.

        Returns:
            float32 state ``[S]``.
        """

    @abc.abstractmethod
    def render_text(self, state: np.ndarray) -> str:
        """A small text picture of a (numpy) state."""
