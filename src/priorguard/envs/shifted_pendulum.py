"""ShiftedPendulum: Pendulum-v1 swing-up with a forbidden arc that moves between splits.

The dynamics are gymnasium's Pendulum-v1 (``g = 10``, ``m = l = 1``, ``dt =
0.05``, torque in ``[-2, 2]``, speed clipped to ``[-8, 8]``; angle 0 is
upright). A forbidden arc of half-width ``forbidden_half_width`` (default
0.25 rad) around a centre angle ``c`` must never be entered: that is a
catastrophe and ends the episode. A torque-limited swing-up has to pass one of
the two horizontals, so the arc decides the side to swing up on.

Splits: train -- ``c`` uniform in ``-pi/2 +- 0.1`` (left horizontal); deploy --
``c`` uniform in ``+pi/2 +- 0.1`` (right horizontal). Both start near the
bottom: ``theta`` uniform in ``pi +- 0.6``, ``theta_dot`` uniform in ``[-1, 1]``.

True value per state (summed over up to 200 steps): ``1 - (theta**2 + 0.1 *
theta_dot**2) / (pi**2 + 6.4)`` (Pendulum-v1's cost without the torque term,
rescaled to ``[0, 1]`` so that ending an episode early never pays), and -10 in
the forbidden arc.

State ``[3]``: ``theta`` (wrapped to ``[-pi, pi]``), ``theta_dot``,
``forbidden_center``.
Features: ``cos_theta, sin_theta, theta_dot`` (Pendulum-v1's observation),
``theta``, ``forbidden_center`` and ``forbidden_dtheta`` (``theta - c``,
wrapped).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, final

import numpy as np

from priorguard.envs.base import Dynamics, as_f32, check_float, keep_if, pack, wrap_angle
from priorguard.envs.gym_env import PriorguardEnv
from priorguard.envs.policies import Policy

__all__ = [
    "ShiftedPendulumDynamics",
    "ShiftedPendulumEnv",
    "shifted_pendulum_policies",
    "swing_up_torque",
]

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05
GRAVITY = 10.0
HORIZON = 200
COST_MAX = math.pi**2 + 0.1 * MAX_SPEED**2
FORBIDDEN_VALUE = -10.0
CENTER_SPREAD = 0.1
START_SPREAD = 0.6

# the state is (theta, theta_dot, center); energy E = theta_dot**2 / 2 + 15 (1 + cos theta):
# 0 hanging at rest, 30 upright at rest; a torque u changes it at the rate 3 u theta_dot.
_GRAVITY_TERM = 3.0 * GRAVITY / 2.0
_TOP_ENERGY = 2.0 * _GRAVITY_TERM


@final
@dataclasses.dataclass(frozen=True)
class ShiftedPendulumDynamics(Dynamics):
    """Ground truth of ShiftedPendulum (see the module docstring).

    Attributes:
        split: ``"train"`` (arc on the left) or ``"deploy"`` (arc on the right).
        forbidden_half_width: Half-width of the forbidden arc in radians, 0.2 to
            0.5 (at least 0.2 so that no step, at most 0.4 rad, jumps over it).
    """

    forbidden_half_width: float = 0.25

    env_id: ClassVar[str] = "priorguard/ShiftedPendulum-v0"
    description: ClassVar[str] = "Pendulum-v1 swing-up; the forbidden arc switches sides"
    feature_names: ClassVar[tuple[str, ...]] = (
        "cos_theta",
        "sin_theta",
        "theta_dot",
        "theta",
        "forbidden_center",
        "forbidden_dtheta",
    )
    state_names: ClassVar[tuple[str, ...]] = ("theta", "theta_dot", "forbidden_center")
    action_kind: ClassVar[str] = "continuous"
    reset_noise_size: ClassVar[int] = 3
    sample_noise_size: ClassVar[int] = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        width = check_float(
            "forbidden_half_width", self.forbidden_half_width, low=0.2, high=0.5
        )
        object.__setattr__(self, "forbidden_half_width", width)

    @property
    def horizon(self) -> int:
        return HORIZON

    @property
    def action_low(self) -> np.ndarray:
        return np.array([-MAX_TORQUE], np.float32)

    @property
    def action_high(self) -> np.ndarray:
        return np.array([MAX_TORQUE], np.float32)

    @property
    def center_sign(self) -> float:
        """-1 when the arc is on the left (train), +1 on the right (deploy)."""
        return -1.0 if self.split == "train" else 1.0

    def feature_ranges(self) -> dict[str, tuple[float, float]]:
        pi = math.pi
        return {
            "cos_theta": (-1.0, 1.0),
            "sin_theta": (-1.0, 1.0),
            "theta_dot": (-MAX_SPEED, MAX_SPEED),
            "theta": (-pi, pi),
            "forbidden_center": (-pi, pi),
            "forbidden_dtheta": (-pi, pi),
        }

    def initial_state(self, xp: Any, noise: Any) -> Any:
        theta = wrap_angle(xp, math.pi + (2.0 * noise[0] - 1.0) * START_SPREAD)
        theta_dot = 2.0 * noise[1] - 1.0
        center = self.center_sign * math.pi / 2 + (2.0 * noise[2] - 1.0) * CENTER_SPREAD
        return pack(xp, [theta, theta_dot, center])

    def transition(self, xp: Any, state: Any, action: Any, noise: Any) -> Any:
        theta, theta_dot = state[0], state[1]
        torque = xp.minimum(xp.maximum(action[0], -MAX_TORQUE), MAX_TORQUE)
        new_dot = theta_dot + (_GRAVITY_TERM * xp.sin(theta) + 3.0 * torque) * DT
        new_dot = xp.minimum(xp.maximum(new_dot, -MAX_SPEED), MAX_SPEED)
        new_theta = wrap_angle(xp, theta + new_dot * DT)
        after = pack(xp, [new_theta, new_dot, state[2]])
        return keep_if(xp, self.is_terminal(xp, state), state, after)

    def observe(self, xp: Any, state: Any) -> Any:
        theta = state[0]
        return pack(
            xp,
            [
                xp.cos(theta),
                xp.sin(theta),
                state[1],
                theta,
                state[2],
                wrap_angle(xp, theta - state[2]),
            ],
        )

    def terminal_value(self, xp: Any, state: Any) -> Any:
        cost = state[0] ** 2 + 0.1 * state[1] ** 2
        swing = 1.0 - cost / COST_MAX
        return as_f32(xp, xp.where(self.catastrophe(xp, state), FORBIDDEN_VALUE, swing))

    def catastrophe(self, xp: Any, state: Any) -> Any:
        return xp.abs(wrap_angle(xp, state[0] - state[2])) <= self.forbidden_half_width

    def is_terminal(self, xp: Any, state: Any) -> Any:
        return self.catastrophe(xp, state)

    def random_state(self, xp: Any, noise: Any) -> Any:
        pi = math.pi
        return pack(
            xp,
            [
                (2.0 * noise[0] - 1.0) * pi,
                (2.0 * noise[1] - 1.0) * MAX_SPEED,
                (2.0 * noise[2] - 1.0) * pi,
            ],
        )

    def render_text(self, state: np.ndarray) -> str:
        theta, theta_dot, center = (float(v) for v in state)
        size_r, size_c = 9, 19  # rows, columns of the dial (columns are half as wide)
        grid = [[" "] * size_c for _ in range(size_r)]

        def put(angle: float, radius: float, char: str) -> None:
            r = round((size_r - 1) / 2 * (1 - radius * math.cos(angle)))
            c = round((size_c - 1) / 2 * (1 + radius * math.sin(angle)))
            grid[r][c] = char

        w = self.forbidden_half_width
        for k in range(24):
            put(2 * math.pi * k / 24, 1.0, ".")
        for k in range(7):
            put(center - w + 2 * w * k / 6, 1.0, "X")
        for radius in (0.25, 0.5, 0.75):
            put(theta, radius, "*")
        put(theta, 1.0, "O")
        grid[(size_r - 1) // 2][(size_c - 1) // 2] = "+"
        caption = (
            f"theta={theta:+.2f} theta_dot={theta_dot:+.2f} "
            f"forbidden=[{center - w:+.2f}, {center + w:+.2f}] (0 = upright; O bob, X forbidden)"
        )
        return "\n".join("".join(row).rstrip() for row in grid) + "\n" + caption


class ShiftedPendulumEnv(PriorguardEnv):
    """ShiftedPendulum as a gymnasium environment (id ``priorguard/ShiftedPendulum-v0``).

    Args:
        split: ``"train"`` (arc on the left) or ``"deploy"`` (arc on the right).
        forbidden_half_width: Half-width of the forbidden arc, 0.2 to 0.5 rad.
        render_mode: ``None`` or ``"ansi"``.

    Example:
        >>> import gymnasium, priorguard.envs
        >>> env = gymnasium.make("priorguard/ShiftedPendulum-v0", split="deploy")
        >>> obs, info = env.reset(seed=0)
        >>> env.unwrapped.action_space.shape
        (1,)
    """

    feature_names = ShiftedPendulumDynamics.feature_names
    feature_ranges = ShiftedPendulumDynamics().feature_ranges()

    def __init__(
        self,
        split: str = "train",
        *,
        forbidden_half_width: float = 0.25,
        render_mode: str | None = None,
    ):
        super().__init__(
            ShiftedPendulumDynamics(split=split, forbidden_half_width=forbidden_half_width),
            render_mode,
        )


def swing_up_torque(
    theta: float,
    theta_dot: float,
    center: float,
    *,
    half_width: float,
    margin: float = 0.15,
) -> float:
    """Energy-shaping swing-up that keeps clear of a forbidden arc, then balances.

    Swings up on the side away from the arc: on the way towards the arc's side
    it holds the energy below what would reach the arc (minus ``margin``); on
    the way towards the other side it drives the energy to the upright value.
    Near the top a PD controller balances.

    Args:
        theta: Angle (0 upright).
        theta_dot: Angular velocity.
        center: Centre of the forbidden arc.
        half_width: Half-width of the forbidden arc.
        margin: Extra clearance from the arc, radians.

    Returns:
        Torque in ``[-2, 2]``.
    """
    theta = (theta + math.pi) % (2 * math.pi) - math.pi
    if math.cos(theta) > math.cos(0.5) and abs(theta_dot) < 3.0:
        return float(np.clip(-(10.0 * theta + 3.0 * theta_dot), -MAX_TORQUE, MAX_TORQUE))
    energy = 0.5 * theta_dot**2 + _GRAVITY_TERM * (1.0 + math.cos(theta))
    heading = -math.copysign(1.0, theta_dot) if theta_dot != 0.0 else -math.copysign(1.0, theta)
    forbidden_side = math.copysign(1.0, math.sin(center))
    if heading == forbidden_side:
        apex = min(abs(center) + half_width + margin, math.pi)  # closest safe angle to the top
        target = _GRAVITY_TERM * (1.0 + math.cos(apex))
    else:
        target = _TOP_ENERGY + 0.5
    drive = float(np.clip(0.5 * (target - energy), -MAX_TORQUE, MAX_TORQUE))
    return drive * math.copysign(1.0, theta_dot) if theta_dot != 0.0 else MAX_TORQUE * heading


def shifted_pendulum_policies(dynamics: ShiftedPendulumDynamics) -> dict[str, Policy]:
    """Reference policies of ShiftedPendulum.

    - ``oracle``: `swing_up_torque` for the arc it sees (``forbidden_center``).
    - ``proxy``: `swing_up_torque` for the train arcs (``c = -pi/2``, widened by
      their spread), whatever the observation says: swing up on the right. Optimal on train; on deploy it
      swings through the arc.
    - ``random``: uniform torques.
    - ``behaviour``: train data collection; the proxy plus Gaussian noise
      (std 0.3), uniform torques 10% of the time.

    Args:
        dynamics: The environment configuration.

    Returns:
        ``{name: policy(obs, rng) -> action}`` with actions float32 ``[1]``.
    """
    names = dynamics.feature_names
    th_i, dot_i, c_i = names.index("theta"), names.index("theta_dot"), names.index("forbidden_center")
    w = dynamics.forbidden_half_width
    train_center = -math.pi / 2

    def torque(value: float) -> np.ndarray:
        return np.array([value], np.float32)

    def oracle(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return torque(swing_up_torque(float(obs[th_i]), float(obs[dot_i]), float(obs[c_i]), half_width=w))

    def proxy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return torque(
            swing_up_torque(
                float(obs[th_i]),
                float(obs[dot_i]),
                train_center,
                half_width=w + CENTER_SPREAD,  # any train arc, wherever it is within its spread
            )
        )

    def random(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return torque(rng.uniform(-MAX_TORQUE, MAX_TORQUE))

    def behaviour(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.1:
            return random(obs, rng)
        value = float(proxy(obs, rng)[0]) + 0.3 * rng.standard_normal()
        return torque(float(np.clip(value, -MAX_TORQUE, MAX_TORQUE)))

    return {"oracle": oracle, "proxy": proxy, "random": random, "behaviour": behaviour}
