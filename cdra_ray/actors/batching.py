"""Coalesce concurrent single-item calls into one batched engine call.

Actors are called once per group, as groups finish upstream (streaming), but an engine is fastest when it
sees many sequences at once. A threaded actor (``max_concurrency > 1``) routes every call through a
:class:`MicroBatcher`: the first caller to arrive becomes the leader, waits ``max_wait_s`` for others, runs
``batch_fn`` once on everything queued, and hands each caller its own result. Only the leader touches the
engine, so the engine never runs two batches at once; ``engine_lock`` also guards weight loading.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

X = TypeVar("X")
Y = TypeVar("Y")


@dataclass
class _Pending(Generic[X, Y]):
    item: X
    done: threading.Event = field(default_factory=threading.Event)
    result: Y | None = None
    error: BaseException | None = None


class MicroBatcher(Generic[X, Y]):
    def __init__(self, batch_fn: Callable[[list[X]], list[Y]], *, max_wait_s: float = 0.05, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._batch_fn = batch_fn
        self._max_wait_s = max_wait_s
        self._max_batch = max_batch
        self._queue: list[_Pending[X, Y]] = []
        self._queue_lock = threading.Lock()
        self.engine_lock = threading.Lock()  # held while a batch runs; weight loading takes it too
        self.batch_sizes: list[int] = []  # one entry per batch run, for metrics and tests

    def __call__(self, item: X) -> Y:
        pending: _Pending[X, Y] = _Pending(item)
        with self._queue_lock:
            self._queue.append(pending)
        while not pending.done.is_set():
            # Whoever gets the engine lock serves everything queued so far (possibly including others' items).
            if self.engine_lock.acquire(timeout=0.01):
                try:
                    if not pending.done.is_set():
                        time.sleep(self._max_wait_s)  # let concurrent callers join this batch
                        self._run_batch()
                finally:
                    self.engine_lock.release()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _run_batch(self) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
        if not batch:
            return
        self.batch_sizes.append(len(batch))
        try:
            results = self._batch_fn([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for pending, result in zip(batch, results):
                pending.result = result
        except BaseException as err:  # every caller of a failed batch sees the error
            for pending in batch:
                pending.error = err
        finally:
            for pending in batch:
                pending.done.set()
