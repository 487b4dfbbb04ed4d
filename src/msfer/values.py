"""Allowed ranges of numeric settings, and the one clear error for a value outside them.

A setting given by a user (a config key, an override) that is of the wrong type or out of
range is an :class:`~msfer.errors.MsferError` naming the key, the value and what is
expected, so ``msfer train ... train.epochs=0`` stops at once with exit 2 instead of failing
somewhere inside training with a traceback.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Real
from typing import Any

import yaml

from .errors import MsferError


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (``None``: unbounded); a bound is excluded when its ``*_open`` is set."""

    low: float | None = None
    high: float | None = None
    whole: bool = False  # integers only
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False  # null (None) is allowed too

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        low, high = _text(self.low), _text(self.high)
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {high}"
        else:
            text = kind
        return text + (" or null" if self.nullable else "")

    def fits_type(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Real):  # True is an int to Python, not to a user
            return False
        return isinstance(value, int) or not self.whole

    def contains(self, value: Real) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))


def _text(bound: float | None) -> str:
    if bound is None:
        return ""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def check_number(key: str, value: Any, allowed: Range) -> None:
    """Raise :class:`MsferError` naming ``key`` unless ``value`` is a number in ``allowed`` (or an allowed null)."""
    if value is None and allowed.nullable:
        return
    if not allowed.fits_type(value):
        raise MsferError(f"config {key}={value!r} has the wrong type: expected {allowed.describe()}")
    if not allowed.contains(value):
        raise MsferError(f"config {key}={value!r} is out of range: expected {allowed.describe()}")


def check_numbers(key: str, value: Any, allowed: Range, length: int | None = None, ordered: bool = False) -> None:
    """Raise :class:`MsferError` unless ``value`` is a list of numbers in ``allowed``.

    ``length``: how many it must hold; ``ordered``: a ``[low, high]`` pair with low <= high.
    """
    if value is None and allowed.nullable:
        return
    shape = "[low, high] with low <= high" if ordered else f"of {length} numbers" if length else "of numbers"
    what = f"a list {shape}, each {allowed.describe().removesuffix(' or null')}"
    what += " (or null)" if allowed.nullable else ""
    if not isinstance(value, list | tuple) or not value or len(value) != (2 if ordered else length or len(value)):
        raise MsferError(f"config {key}={value!r} has the wrong type: expected {what}")
    in_range = all(allowed.fits_type(item) and allowed.contains(item) for item in value)
    if not in_range or (ordered and value[0] > value[1]):
        raise MsferError(f"config {key}={value!r} is out of range: expected {what}")


class _Loader(yaml.SafeLoader):
    """YAML for settings: ``3e-4`` is a number (YAML 1.1 wants ``3.0e-4``; a learning rate should not need the
    dot), and a key given twice in one mapping is an error (PyYAML keeps the last silently)."""


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a key must be a single value, not a list or mapping",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice in one mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str) -> Any:
    """``text`` parsed as YAML for a settings file (configs, benchmark suites, studies).

    Like ``yaml.safe_load``, except that ``3e-4`` reads as a number and a key repeated within
    one mapping raises ``yaml.YAMLError`` (the caller names the file).
    """
    return yaml.load(text, Loader=_Loader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line, for messages: what is wrong and where (line and column, from 1)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")
