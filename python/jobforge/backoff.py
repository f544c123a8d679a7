"""Retry backoff: how long a failed attempt waits before the next one.

``Fixed(s)`` waits s seconds every time; ``Linear(s)`` waits s × attempt; ``Exponential(base,
factor=2, max=None, jitter=0)`` waits base × factor^(attempt−1), capped at ``max`` seconds and
spread by ±``jitter`` (a fraction, 0..1) so that many failing jobs do not retry in lockstep. The
formulas themselves live in the engine (``Backoff`` in ``cpp/src/job.cpp``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from .errors import ValidationError


def _seconds(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{field} must be a number of seconds, got {value!r}")
    if value < 0 or math.isinf(value):
        raise ValidationError(
            f"backoff: {field} must be a finite number of seconds >= 0, got {value!r}", "backoff"
        )
    if value > 1e12:  # ~31,700 years: the engine's limit for times
        raise ValidationError(f"backoff: {field} must be at most 1e12 seconds, got {value!r}",
                              "backoff")  # fmt: skip
    return float(value)


@dataclass(frozen=True)
class Fixed:
    delay: float

    def __post_init__(self) -> None:
        _seconds("Fixed delay", self.delay)

    @property
    def base(self) -> float:
        return self.delay

    def encode(self) -> str:
        return "fixed"


@dataclass(frozen=True)
class Linear:
    step: float

    def __post_init__(self) -> None:
        _seconds("Linear step", self.step)

    @property
    def base(self) -> float:
        return self.step

    def encode(self) -> str:
        return "linear"


@dataclass(frozen=True)
class Exponential:
    base: float
    factor: float = 2.0
    max: Optional[float] = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        _seconds("Exponential base", self.base)
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)):
            raise TypeError(f"Exponential factor must be a number, got {self.factor!r}")
        if not self.factor >= 1 or math.isinf(self.factor):
            raise ValueError(f"Exponential factor must be at least 1, got {self.factor!r}")
        if self.max is not None:
            _seconds("Exponential max", self.max)
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)):
            raise TypeError(f"Exponential jitter must be a number, got {self.jitter!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Exponential jitter must be between 0 and 1, got {self.jitter!r}")

    def encode(self) -> str:
        max_ms = 0 if self.max is None else max(1, int(round(self.max * 1000)))
        return f"exponential:{float(self.factor)!r}:{max_ms}:{float(self.jitter)!r}"


BackoffSpec = Union[Fixed, Linear, Exponential]


def decode(text: str, base_ms: int) -> BackoffSpec:
    """The Backoff object a stored job carries (its text form and retry delay)."""
    base = base_ms / 1000.0
    if text.startswith("exponential"):
        parts = text.split(":")
        if len(parts) == 4:
            max_ms = int(parts[2])
            return Exponential(base, float(parts[1]), max_ms / 1000.0 if max_ms else None,
                               float(parts[3]))  # fmt: skip
        return Exponential(base)
    if text == "linear":
        return Linear(base)
    return Fixed(base)


__all__ = ["Fixed", "Linear", "Exponential", "BackoffSpec"]
