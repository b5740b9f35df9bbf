"""Progress reporting shared by the steps."""

from __future__ import annotations

import time
from collections.abc import Callable

Log = Callable[[str], None]


def no_log(_: str) -> None:
    return None


class Throttle:
    """Calls `log` at most every `seconds` (and always on the last update)."""

    def __init__(self, log: Log, seconds: float = 5.0) -> None:
        self.log = log
        self.seconds = seconds
        self.started = time.monotonic()
        self.last = self.started

    def __call__(self, message: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self.last >= self.seconds:
            self.last = now
            self.log(message)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
