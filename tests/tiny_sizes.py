"""Tiny sizes for running shipped experiments end to end in tests.

Shared by the CLI and sweep-backend tests, so that their runs have the same
shapes and reuse each other's programs through the persistent compilation cache.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.train_episodes=4", "data.deploy_episodes=2", "data.max_points=200",
    "world.inference.steps=40", "terminal.inference.steps=20",
    "planner.simulations=4", "planner.function_samples=2", "planner.depth=2",
    "planner.cem={iterations = 1, population = 8, elites = 2, horizon = 2}",
    "audit={states = 16, horizon = 2, adversarial_restarts = 2, adversarial_steps = 5}",
]


def tiny_args(name: str, *extra: str) -> list[str]:
    """``--set`` arguments that shrink shipped experiment ``name`` (plus ``extra`` overrides)."""
    args: list[str] = []
    for item in (*TINY, *extra):
        args += ["--set", item]
    text = (ROOT / "experiments" / f"{name}.toml").read_text()
    if "[instrumental]" in text:
        args += ["--set", "instrumental.horizon=2", "--set", "instrumental.rollouts=2",
                 "--set", "instrumental.inference.steps=20"]
    return args
