"""Allowed ranges of numeric inputs, checked the same way for config fields and command-line flags.

A `Range` says in words what it allows (``>= 1``, ``in [0, 1)``), so that a refused value is
reported with its name, the value and the rule, whether it came from a recipe file (``epochs=0: must
be >= 1``) or a flag (argparse: ``argument --epochs: 0: must be >= 1``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of finite numbers; ``None`` leaves a side open-ended.

    Attributes:
        lo: Smallest allowed value (or the bound it must exceed, with ``lo_open``).
        hi: Largest allowed value (or the bound it must stay under, with ``hi_open``).
        lo_open: ``lo`` itself is not allowed.
        hi_open: ``hi`` itself is not allowed.
        infinite_ok: ``inf`` (or ``-inf``, below an open-ended side) is a meaningful value, e.g. "never".
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    infinite_ok: bool = False

    def rule(self, value: float | None = None) -> str:
        """The range in words: ``must be >= 1``, ``must be > 0``, ``must be in [0, 1)``.

        For a refused ``nan`` or ``inf`` it says ``must be a finite number >= 0``: the bound alone
        would read as if ``inf`` were below it.
        """
        nan = isinstance(value, float) and math.isnan(value)
        inf = isinstance(value, float) and math.isinf(value)
        what = "a finite number " if nan or (inf and not self.infinite_ok) else ""
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"must be {what}in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"must be {what}{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"must be {what}{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "must be a finite number"

    def allows(self, value: float) -> bool:
        """``value`` is inside the range (and finite, unless ``infinite_ok``)."""
        # Only floats can be nan or inf; math.isfinite would overflow on a 400-digit int.
        if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not self.infinite_ok)):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))

    def check(self, name: str, value: float) -> None:
        """Raise ``ValueError("name=value: rule")`` unless ``value`` is allowed."""
        if not self.allows(value):
            raise ValueError(f"{name}={value!r}: {self.rule(value)}")


def _num(bound: float) -> str:
    """``1`` rather than ``1.0`` for whole bounds: the rule reads like the flag's help."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def flag_type(kind: type[int] | type[float], allowed: Range) -> Callable[[str], int | float]:
    """An argparse ``type=`` that parses ``kind`` and refuses values outside ``allowed``.

    argparse turns the `argparse.ArgumentTypeError` into ``argument --flag: VALUE: rule`` and exit 2.
    """

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: not {'an integer' if kind is int else 'a number'}"
            ) from None
        if not allowed.allows(value):
            raise argparse.ArgumentTypeError(f"{text}: {allowed.rule(value)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, lo_open=True)
FRACTION = Range(0, 1, hi_open=True)  # [0, 1)
