"""Allowed ranges of numeric config fields, declared as data beside each field and checked at compose time.

A field of the schema declares its range in its dataclass metadata with ``ranged``::

    epochs: int = ranged(1, ge=1)
    lr: float = ranged(1e-3, gt=0)
    max_steps: int | None = ranged(None, ge=1)           # None is always allowed for an optional field
    betas: list[float] = ranged(factory=lambda: [0.9, 0.999], ge=0, lt=1)   # every element

Dataclasses defined beside their code (the projector, ShapesWorld, storage settings) get theirs from a table,
``SECTION_RANGES`` in ``deco_core.config_schema``. ``check_ranges`` walks the whole schema: every int/float field
(alone, optional, or in a list/tuple/dict) must have a range, and every value must lie in it; the error names the
full key path, the value and the range. Non-finite numbers (nan, inf) are never in range.

An enum-like string field declares its choices the same way, with ``chosen``::

    schedule: str = chosen("cosine", ("cosine", "linear", "constant"))

and ``check_ranges`` reports a value outside them naming the key, the value and the choices.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHOICES_KEY", "RANGE_KEY", "Range", "check_ranges", "chosen", "numeric_fields", "ranged"]

RANGE_KEY = "range"
CHOICES_KEY = "choices"


@dataclass(frozen=True)
class Range:
    """An interval of allowed values: ``ge``/``gt`` below, ``le``/``lt`` above (None = unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""  # why the range is what it is, when that is not obvious

    def contains(self, value: float) -> bool:
        return (math.isfinite(value)
                and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self, kind: str) -> str:
        """'an integer >= 1', 'a number in [0, 1)', 'a number > 0', 'any finite number'."""
        low = (f"[{_fmt(self.ge)}" if self.ge is not None else f"({_fmt(self.gt)}" if self.gt is not None else None)
        high = (f"{_fmt(self.le)}]" if self.le is not None else f"{_fmt(self.lt)})" if self.lt is not None else None)
        if low and high:
            text = f"{kind} in {low}, {high}"
        elif low:
            text = f"{kind} {'>=' if self.ge is not None else '>'} {low[1:]}"
        elif high:
            text = f"{kind} {'<=' if self.le is not None else '<'} {high[:-1]}"
        else:
            text = f"any finite {kind.split(' ', 1)[1]}"
        return f"{text} ({self.note})" if self.note else text


def _fmt(v: float | None) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def ranged(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None, note: str = "") -> Any:
    """A dataclass field with its allowed range in the metadata (``default`` or ``factory`` as in ``field``)."""
    meta = {RANGE_KEY: Range(ge, gt, le, lt, note)}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def chosen(default: Any, choices: tuple[Any, ...]) -> Any:
    """A dataclass field whose value must be one of ``choices`` (checked at compose time by ``check_ranges``)."""
    if default not in choices:
        raise ValueError(f"chosen: default {default!r} is not among {choices}")
    return field(default=default, metadata={CHOICES_KEY: tuple(choices)})


# ------------------------------------------------------------------------------------------- the walk
def _numeric_kind(tp: Any) -> str | None:
    """'an integer' / 'a number' when ``tp`` holds numbers (alone, Optional, or as list/tuple/dict values)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return None
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if origin in (list, tuple, typing.Union, getattr(__import__("types"), "UnionType", None)):
        kinds = {_numeric_kind(a) for a in args if a is not type(None) and a is not Ellipsis} - {None}
        return "a number" if "a number" in kinds else kinds.pop() if kinds else None
    if origin is dict and len(args) == 2:
        return _numeric_kind(args[1])
    return None


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass ``tp`` is (or lists, or optionally is)."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def numeric_fields(cls: type, table: dict[type, dict[str, Range]], prefix: str = "") -> dict[str, Range | None]:
    """{key path: declared range or None} for every numeric field under ``cls`` (lists of sections as ``[]``)."""
    out: dict[str, Range | None] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        sub = _dataclass_of(tp)
        if sub is not None:
            out.update(numeric_fields(sub, table, f"{key}[]." if typing.get_origin(tp) is list else f"{key}."))
        elif _numeric_kind(tp):
            out[key] = f.metadata.get(RANGE_KEY) or table.get(cls, {}).get(f.name)
    return out


def check_ranges(cls: type, data: dict[str, Any], table: dict[type, dict[str, Range]], prefix: str = "") -> list[str]:
    """Problems ('config key ...: expected ...') of the plain-dict config ``data`` against ``cls``'s ranges."""
    problems: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key, value = hints[f.name], f"{prefix}{f.name}", data.get(f.name)
        sub = _dataclass_of(tp)
        if sub is not None:
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for i, item in items:
                if isinstance(item, dict):
                    problems += check_ranges(sub, item, table, f"{key}[{i}]." if i is not None else f"{key}.")
            continue
        choices = f.metadata.get(CHOICES_KEY)
        if choices is not None and value not in choices:
            problems.append(f"config key '{key}' = {value!r}: expected one of {', '.join(map(str, choices))}")
            continue
        kind = _numeric_kind(tp)
        if kind is None or value is None:
            continue
        rng = f.metadata.get(RANGE_KEY) or table.get(cls, {}).get(f.name)
        if rng is None:
            problems.append(f"config key '{key}' has no declared range (a schema bug: add one)")
            continue
        if isinstance(value, dict):
            elements = [(f"{key}.{k}", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            elements = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        else:
            elements = [(key, value)]
        for where, v in elements:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not rng.contains(v):
                problems.append(f"config key '{where}' = {v!r}: expected {rng.describe(kind)}")
    return problems
