"""What a parameter accepts: ``Limit``, declared once per parameter in the attack and
defense specs, checked when a grid is validated (so a trial never meets a value it
refuses) and listed by tests/test_fuzz.py, which derives its good and bad values from it.

Kinds: ``int`` (a whole number, never a bool), ``number`` (an int or float, finite,
never a bool), ``bool``, and ``widths`` (a list of at least two distinct whole numbers,
e.g. bit widths). Whole numbers stay within ``INT_MAX`` unless a limit says less: TensorFlow
and numpy take counts and seeds as 32-bit integers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limit:
    kind: str  # "int", "number", "bool" or "widths"
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused (numbers only)
    high_open: bool = False  # high itself is refused (numbers only)
    what: str = ""  # what the value is, for messages: "a class index"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused ("must be a whole number >= 1"); None if accepted."""
        if self.accepts(value):
            return None
        high = self.bounds()[1]
        if self.kind == "int" and self.high is None and _integer(value) and value > high:
            return f"must be at most {high}"  # the implicit cap, which text() leaves out
        return f"must be {self.text()}"

    def accepts(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "widths":
            return (isinstance(value, (list, tuple)) and len(value) >= 2
                    and all(Limit("int", self.low, self.high).accepts(v) for v in value)
                    and len(set(value)) == len(value))
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind == "int" and not _integer(value):
            return False
        if not _finite(value):
            return False
        low, high = self.bounds()
        return (low is None or (value > low if self.low_open else value >= low)) and \
            (high is None or (value < high if self.high_open else value <= high))

    def bounds(self) -> tuple[float | None, float | None]:
        """(low, high) as checked: whole numbers are capped at INT_MAX."""
        if self.kind == "int":
            return self.low, INT_MAX if self.high is None else min(self.high, INT_MAX)
        return self.low, self.high

    def text(self) -> str:
        """What is accepted, in words: "a whole number >= 1", "a number in (0, 1)"."""
        prefix = f"{self.what}, " if self.what else ""
        if self.kind == "bool":
            return prefix + "true or false"
        if self.kind == "widths":
            return f"{prefix}a list of at least two distinct whole numbers in {_g(self.low)}..{_g(self.high)}"
        if self.kind == "int":
            if self.high is None:
                return f"{prefix}a whole number >= {_g(self.low)}"
            return f"{prefix}a whole number in {_g(self.low)}..{_g(self.high)}"
        if self.high is None:
            return f"{prefix}a finite number {'>' if self.low_open else '>='} {_g(self.low)}"
        return (f"{prefix}a number in {'(' if self.low_open else '['}{_g(self.low)}, "
                f"{_g(self.high)}{')' if self.high_open else ']'}")


def _finite(value: numbers.Real) -> bool:
    """Finite, and within float range: a number parameter ends up as a float."""
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond 1.8e308
        return False


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _g(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def whole(low: int, high: int | None = None, what: str = "") -> Limit:
    """A whole number in low..high (high None: up to INT_MAX)."""
    return Limit("int", low, high, what=what)


def positive(high: float | None = None, high_open: bool = False, what: str = "") -> Limit:
    """A finite number > 0 (and <= high, or < high when high_open)."""
    return Limit("number", 0, high, low_open=True, high_open=high_open, what=what)


def non_negative(high: float | None = None, what: str = "") -> Limit:
    return Limit("number", 0, high, what=what)


FLAG = Limit("bool")
