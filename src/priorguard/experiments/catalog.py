"""The shipped experiment specs, found by name."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def shipped_dir() -> Path | None:
    """Folder of the shipped specs: inside the wheel, or the repo's ``experiments/``."""
    installed = Path(__file__).resolve().parent.parent / "_shipped_experiments"
    if installed.is_dir():
        return installed
    repo = Path(__file__).resolve().parents[3] / "experiments"
    return repo if repo.is_dir() else None


def shipped_experiments() -> dict[str, Path]:
    """Name (file stem) -> path of every shipped experiment spec."""
    folder = shipped_dir()
    if folder is None:
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}
