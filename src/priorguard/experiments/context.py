"""What every step of a run reads: the resolved spec, the seed, the environment's facts, timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from priorguard.envs.source import EnvSource
from priorguard.experiments.drivers import PlannerDriver, driver_for
from priorguard.experiments.spec import ExperimentSpec, world_outputs

Progress = Callable[[str], None]
__all__ = ["Progress", "RunContext", "world_outputs"]


@dataclass
class RunContext:
    """One run's fixed facts, shared by its steps.

    Attributes:
        spec: the resolved spec (its ``sweep`` is ignored).
        seed: the run's seed.
        source: the environment as the run reads it (episodes, policies, optional ground truth).
        info: the environment's ``EnvInfo``.
        progress: called with a short label as each step starts.
        features: the observation's column names, in order.
        ranges: each feature's declared ``(low, high)``.
        discrete: whether actions are discrete.
        discount: I's discount (0.95 without I): the weight of I in ``T + discount * I``.
        driver: how this planner kind is driven (actor, calibration pairs, audit plan).
        world_columns: the observation columns W predicts the change of.
        timings: step name -> seconds, filled in as steps run.
    """

    spec: ExperimentSpec
    seed: int
    source: EnvSource
    info: Any
    progress: Progress
    features: list[str]
    ranges: list[tuple[float, float]]
    discrete: bool
    discount: float
    driver: PlannerDriver
    world_columns: list[int]
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: ExperimentSpec, seed: int, progress: Progress | None = None) -> RunContext:
        source = spec.source()
        info = source.info
        features = list(info.feature_names)
        discount = spec.instrumental.discount if spec.instrumental is not None else 0.95
        return cls(spec=spec, seed=seed, source=source, info=info, progress=progress or (lambda label: None), features=features,
                   ranges=[info.feature_ranges[f] for f in features], discrete=info.action_kind == "discrete",
                   discount=discount, driver=driver_for(spec.planner, info, discount),
                   world_columns=list(world_outputs(spec, features)))

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Records the wall time of the block as ``timings[name]``."""
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
