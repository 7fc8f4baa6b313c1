"""The shipped experiment specs, found by name."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from priorguard.experiments.spec import ExperimentSpec
from priorguard.priors.errors import SpecError, did_you_mean


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


def load_spec(path_or_name: str | Path) -> ExperimentSpec:
    """Loads a spec from a TOML file, or a shipped experiment by name.

    Raises:
        SpecError: the file is missing, not TOML, or not a valid spec.
    """
    path = Path(path_or_name)
    if not path.exists():
        shipped = shipped_experiments()
        name = str(path_or_name)
        if name in shipped:
            path = shipped[name]
        else:
            raise SpecError.single(
                "<spec>",
                f"no such file or shipped experiment: {name!r}{did_you_mean(name, shipped)};"
                f" shipped: {', '.join(sorted(shipped)) or 'none'}",
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError.single("<spec>", f"cannot read {path}: {err}") from None
    return ExperimentSpec.from_toml(text, source=str(path))
