"""Pydantic validation errors turned into :class:`SpecError` issues with clean field paths.

Takes the root model class (the experiment spec) as an argument, so `priors` knows no
experiment; the tagged union classes it walks are the kernels and model specs of `priors`.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from priorguard.priors import kernels as k
from priorguard.priors import models as m
from priorguard.priors.errors import SpecError, SpecIssue, did_you_mean
from priorguard.priors.kernels import KERNELS, kernel_kinds

_SCALAR_TYPES = {"float_type", "float_parsing", "int_type", "int_parsing", "finite_number", "bool_type",
                 "string_type", "literal_error"}

_DISCRIMINATOR_KEYS = {"unknown_kernel": "kind", "unknown_model": "model", "unknown_method": "method",
                       "unknown_simplicity": "kind"}

_INTERNAL = re.compile(r"^(float|int|str|bool|none|list\[.*|dict\[.*|function-.*|literal\[.*|.*\[.*\].*)$")


def _tag_classes() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {
        **{f"kernel:{kind.spec.__name__}": kind.spec for kind in KERNELS.values()},
        "kernel:composite": k.CompositeKernel,
        "kernel:search": k.StructureSearch,
        "inference:map": m.MapInference,
        "inference:nuts": m.NutsInference,
        "inference:svi": m.SviInference,
        "inference:ensemble": m.EnsembleInference,
        "simplicity:horseshoe": m.Horseshoe,
        "simplicity:regularized_horseshoe": m.RegularisedHorseshoe,
    }
    return out


def _model_class_of(annotation: Any) -> type[BaseModel] | None:
    """The single BaseModel class inside an annotation (Optional/list/Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_class_of(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin in (list, Union) or str(origin) == "types.UnionType" or origin is not None:
        found = [c for a in typing.get_args(annotation) if (c := _model_class_of(a)) is not None]
        return found[0] if len(found) == 1 else None
    return None


def _class_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class validating the table at raw pydantic ``loc`` under ``root``."""
    tags = _tag_classes()
    cls: type[BaseModel] | None = root
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in tags:
            cls = tags[part]
        elif isinstance(part, str) and part.startswith("model:"):
            parent = loc[i - 1] if i else None
            kind = part.split(":", 1)[1]
            if parent == "instrumental":
                cls = {"gp": m.InstrumentalGP, "bnn": m.InstrumentalBNN}.get(kind)
            else:
                cls = {"gp": m.GPModel, "bnn": m.BNNModel}.get(kind)
        elif isinstance(part, int) or cls is None or _INTERNAL.match(str(part)) or _is_tag(part):
            continue
        elif part in cls.model_fields:
            inner = _model_class_of(cls.model_fields[part].annotation)
            cls = inner
        else:
            return cls
    return cls


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and ":" in part and part.split(":")[0] in {"kernel", "inference", "simplicity",
                                                                             "model"}


def _clean(loc: tuple[Any, ...]) -> list[Any]:
    out = []
    for part in loc:
        if _is_tag(part):
            continue
        if isinstance(part, str) and _INTERNAL.match(part):
            continue
        out.append(part)
    return out


def _fmt_path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z0-9_\-]+|[a-z_]+\.[a-z_.\[\]0-9]+", part):
            out += ("." if out else "") + part
        else:
            out += ("." if out else "") + f'"{part}"'
    return out or "<spec>"


def _message(err: dict[str, Any], loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        cls = _class_at(loc[:-1], root)
        key = loc[-1]
        fields = list(cls.model_fields) if cls else []
        return f"unknown key {key!r}{did_you_mean(str(key), fields)}; allowed keys: {', '.join(fields)}"
    if kind == "missing":
        return "is required but missing"
    if kind == "unknown_kernel" and isinstance(value, dict):
        found = value.get("kind")
        if found is None:
            return f"a kernel needs `kind` (one of {', '.join(kernel_kinds())}) or `search` (a structure search)"
        return (f"unknown kernel kind {found!r}{did_you_mean(str(found), kernel_kinds())};"
                f" allowed: {', '.join(kernel_kinds())}")
    if kind in ("unknown_model", "unknown_method", "unknown_simplicity") and isinstance(value, dict):
        key = {"unknown_model": "model", "unknown_method": "method", "unknown_simplicity": "kind"}[kind]
        choices = {
            "unknown_model": ["gp", "bnn"],
            "unknown_method": ["map", "nuts", "svi", "ensemble"],
            "unknown_simplicity": ["horseshoe", "regularized_horseshoe"],
        }[kind]
        found = value.get(key)
        head = err["msg"]
        if found is None:
            return f"{head} (`{key}` is missing)"
        return f"{head}; got {found!r}{did_you_mean(str(found), choices)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        options = re.findall(r"'([^']*)'", expected)
        hint = did_you_mean(str(value), options) if isinstance(value, str) else ""
        return f"got {value!r}{hint}; allowed: {expected}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}, got {value!r}"
    if kind in ("too_short", "too_long"):
        return f"{err['msg'].replace('List', 'list').replace('Value', 'value')}; got {value!r}"
    if kind in ("finite_number",):
        return f"must be a finite number, got {value!r}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{err['msg'][0].lower() + err['msg'][1:]}; got {value!r} ({type(value).__name__})"
    return err["msg"]


def spec_error(err: ValidationError, root: type[BaseModel], source: str | None = None) -> SpecError:
    """Turns a pydantic ``ValidationError`` of ``root`` into a :class:`SpecError` with clean paths.

    Args:
        err: what pydantic raised.
        root: the model class validated at the top (its fields name the tables).
        source: the file the data came from, for the message.
    """
    grouped: dict[str, list[tuple[dict[str, Any], tuple[Any, ...]]]] = {}
    errors = err.errors(include_url=False)
    paths = [_fmt_path(_clean(tuple(e["loc"]))) for e in errors]
    kept = []
    for i, e in enumerate(errors):
        # A number-or-prior field fails in both union branches; when a table was written,
        # the number branch's complaint is noise if the table branch said something.
        if isinstance(e.get("input"), dict) and e["type"] in _SCALAR_TYPES and any(
            j != i and errors[j]["type"] not in _SCALAR_TYPES and paths[j].startswith(paths[i])
            for j in range(len(errors))
        ):
            continue
        kept.append(e)
    for e in kept:
        loc = tuple(e["loc"])
        parts = _clean(loc)
        param = (e.get("ctx") or {}).get("param")
        if param:
            parts = parts + [param]
        key = _DISCRIMINATOR_KEYS.get(e["type"])
        if key and isinstance(e.get("input"), dict) and key in e["input"]:
            parts = parts + [key]
        grouped.setdefault(_fmt_path(parts), []).append((e, loc))
    issues = []
    for path, errs in grouped.items():
        # A number-or-prior field reports a failure from each branch: keep the branch
        # that matches what was written.
        value = errs[0][0].get("input")
        if len(errs) > 1:
            if isinstance(value, dict):
                keep = [x for x in errs if not x[0]["type"].startswith(("float", "int", "finite", "bool",
                                                                          "string", "literal"))]
            else:
                keep = [x for x in errs if x[0]["type"] not in ("prior_type", "model_type", "dict_type")]
            errs = keep or errs
        seen = set()
        for e, loc in errs:
            msg = _message(e, loc, root)
            if msg not in seen:
                seen.add(msg)
                issues.append(SpecIssue(path, msg))
    return SpecError(issues, source)
