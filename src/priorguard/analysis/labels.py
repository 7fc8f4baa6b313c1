"""How a sweep point is named wherever runs are shown: the report, ``priorguard compare``, prior-check."""

from __future__ import annotations

from typing import Any

__all__ = ["point_label"]


def point_label(overrides: dict[str, Any]) -> str:
    """Short label of a sweep point: the last two parts of each path; paths that end
    alike and share a value are merged (``terminal+instrumental.features=['dx']``)."""
    merged: dict[tuple[str, str], list[str]] = {}
    for k, v in overrides.items():
        parts = k.split(".")
        merged.setdefault((parts[-1], repr(v) if not isinstance(v, str) else v), []).append(
            parts[-2] if len(parts) > 1 else "")
    items = []
    for (leaf, value), owners in merged.items():
        prefix = "+".join(o for o in owners if o)
        items.append(f"{prefix + '.' if prefix else ''}{leaf}={value}")
    return ", ".join(items) or "base"
