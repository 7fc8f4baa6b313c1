"""Dotted field paths into a spec: ``--set path=value`` overrides and sweep axes."""

from __future__ import annotations

import copy
import re
import tomllib
from typing import Any

from pydantic import BaseModel

from priorguard.priors.distributions import Prior
from priorguard.priors.errors import SpecError, did_you_mean


def split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in path.split("."):
        m = re.fullmatch(r"([^\[\]]+)((?:\[\d+\])*)", token)
        if not m:
            raise ValueError(token)
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def sweep_axis_paths(key: str) -> list[str]:
    """The field paths of a sweep key: one, or several (comma-separated) for a linked axis."""
    return [part.strip() for part in key.split(",")]


def axis_overrides(key: str, value: Any) -> dict[str, Any]:
    paths = sweep_axis_paths(key)
    return {paths[0]: value} if len(paths) == 1 else dict(zip(paths, value))


def check_path(spec: BaseModel, path: str) -> str | None:
    """None when ``path`` names a field of ``spec`` (set or not), else what is wrong."""
    try:
        parts = split_path(path)
    except ValueError:
        return f"not a dotted field path: {path!r}"
    node: Any = spec
    for depth, part in enumerate(parts):
        here = ".".join(map(str, parts[:depth])) or "the spec"
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"{here} has no item [{part}]"
            node = node[part]
            continue
        if isinstance(node, Prior):
            if part == "dist" or part in node.params:
                node = node.params.get(part)
                continue
            return f"{node.dist} prior at {here} has no parameter {part!r}{did_you_mean(part, list(node.params))}"
        if not isinstance(node, BaseModel):
            if node is None and depth == len(parts) - 1:
                return None
            return f"{here} is a value, not a table, so it has no field {part!r}"
        fields = type(node).model_fields
        if part not in fields:
            return f"{here} has no field {part!r}{did_you_mean(part, fields)}; its fields are {', '.join(fields)}"
        node = getattr(node, part)
    return None


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    parts = split_path(path)
    node: Any = data
    for part, nxt in zip(parts[:-1], parts[1:]):
        if isinstance(part, int):
            node = node[part]
            continue
        if not isinstance(node.get(part), dict | list):
            node[part] = {} if isinstance(nxt, str) else []
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def parse_override(text: str) -> tuple[str, Any]:
    """Parses ``path=value`` (the value as TOML, else a bare string)."""
    if "=" not in text:
        raise SpecError.single("--set", f"expected path=value, got {text!r}")
    path, raw = text.split("=", 1)
    path, raw = path.strip(), raw.strip()
    if not path:
        raise SpecError.single("--set", f"empty path in {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value

