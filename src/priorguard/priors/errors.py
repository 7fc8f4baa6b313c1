"""Errors raised at the spec boundary: each names a field path and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec.

    Attributes:
        path: dotted field path, e.g. ``terminal.kernel.lengthscale.scale``
            (``<toml>`` for syntax errors, ``<spec>`` for the whole file).
        message: what was found and what is allowed.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """An invalid spec. ``issues`` lists every problem found, with its path."""

    def __init__(self, issues: Sequence[SpecIssue], source: str | None = None):
        self.issues = tuple(issues)
        self.source = source
        head = f"invalid spec{f' {source}' if source else ''}"
        body = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{head}:\n{body}")

    @classmethod
    def single(cls, path: str, message: str, source: str | None = None) -> SpecError:
        return cls([SpecIssue(path, message)], source)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(issue.path for issue in self.issues)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name`` (case-insensitive), or None."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    if name.lower() in lower:
        return lower[name.lower()]
    match = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    return lower[match[0]] if match else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix, or an empty string."""
    guess = closest(name, choices)
    return f" (did you mean {guess!r}?)" if guess is not None and guess != name else ""


def allowed(choices: Iterable[str], limit: int = 12) -> str:
    choices = sorted(choices)
    shown = ", ".join(repr(c) for c in choices[:limit])
    more = f", ... ({len(choices) - limit} more; see `priorguard list`)" if len(choices) > limit else ""
    return shown + more
