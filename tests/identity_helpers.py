"""Helpers shared by the identity tests."""

from __future__ import annotations

T0 = 1_750_000_000.0


class Clock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
