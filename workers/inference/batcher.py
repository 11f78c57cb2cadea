"""Micro-batching: requests that arrive within a few milliseconds share one generate call.

Each engine owns one `MicroBatcher`: a queue and one thread. A caller (a Celery task
thread) `submit`s its rows and blocks on the returned future. The thread takes the first
waiting request, keeps collecting for `window_s` (or until `max_rows` rows), then runs
the whole group through `run_batch` in one call and hands each caller its slice. Requests
that arrive while a batch is running wait in the queue and form the next batch at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from workers.inference.types import Row, RowOutput

log = logging.getLogger(__name__)
RunBatch = Callable[[list[Row]], list[RowOutput]]
_CLOSE = object()


class BatcherClosed(RuntimeError):
    """The engine was evicted or shut down; get a fresh one from the cache."""


@dataclass
class _Pending:
    rows: list[Row]
    future: Future


@dataclass
class BatchStats:
    """Counters the engine exposes (tests check that concurrent requests were batched)."""

    calls: int = 0  # run_batch calls (one generate call each)
    requests: int = 0  # submitted requests served
    rows: int = 0  # rows decoded
    max_requests_per_call: int = 0


class MicroBatcher:
    """A queue plus one worker thread that groups requests into batched calls."""

    def __init__(self, run_batch: RunBatch, window_s: float = 0.005, max_rows: int = 64, name: str = "engine"):
        self.run_batch = run_batch
        self.window_s = window_s
        self.max_rows = max_rows
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Row]) -> Future:
        """Queue rows for the next batch; the future resolves to their outputs, in order."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("this engine was unloaded")
            self._queue.put(_Pending(rows, future))
        return future

    def close(self) -> None:
        """Stop after serving everything already queued (does not wait)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_CLOSE)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _CLOSE:
                return
            group, closing = self._collect(first)
            self._run(group)
            if closing:
                return

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """The first request plus whatever arrives within the window (up to max_rows)."""
        group, rows = [first], len(first.rows)
        deadline = time.monotonic() + self.window_s
        while rows < self.max_rows:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSE:
                return group, True
            group.append(item)
            rows += len(item.rows)
        return group, False

    def _run(self, group: list[_Pending]) -> None:
        rows = [row for pending in group for row in pending.rows]
        try:
            outputs = self.run_batch(rows)
        except Exception as error:  # noqa: BLE001 - every waiting caller gets the error
            log.exception("batched generation failed")
            for pending in group:
                pending.future.set_exception(error)
            return
        self.stats.calls += 1
        self.stats.requests += len(group)
        self.stats.rows += len(rows)
        self.stats.max_requests_per_call = max(self.stats.max_requests_per_call, len(group))
        start = 0
        for pending in group:
            pending.future.set_result(outputs[start : start + len(pending.rows)])
            start += len(pending.rows)
