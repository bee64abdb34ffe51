"""Wall-clock timers per phase (``timing/generate``, ``timing/learn`` ...): the same numbers feed the
metrics log, the progress bar and ``benchmarks/``."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class PhaseTimer:
    def __init__(self) -> None:
        self._seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self._seconds[name] += seconds

    def pop(self) -> dict[str, float]:
        """The totals since the last pop, as ``timing/<phase>`` metrics; resets the timer."""
        out = {f"timing/{name}": round(value, 4) for name, value in sorted(self._seconds.items())}
        self._seconds.clear()
        return out
