"""The engine's scheduler: requests from many callers share decode slices, fairly.

Each engine owns one `MicroBatcher`: a list of active requests and one thread. A caller (a
Celery task thread) `submit`s its rows and waits on the request's future. The thread
repeatedly picks up to `max_rows` unfinished rows and hands them to `run_batch(rows,
yield_now)`, which decodes them until they finish or `yield_now()` says the mix should
change; rows keep their own decoding state, so a row left out of the next slice resumes
later where it stopped.

Who gets the rows of a slice (issue 13, item 7; issue 19, item 7):
- interactive requests before batch work (evaluations): batch rows are paused while any
  interactive row waits, so an interactive request decodes at its idle speed;
- within a priority, round-robin between tenants, one row each in turn, so one tenant's
  thousand-row request cannot starve another's one-row request;
- within a tenant, first come first served (rows already started go first).

A running slice yields when a newly arrived request would get rows, or when half its rows
have finished while others wait. Requests whose caller has gone (`cancel` set) or whose
deadline passed are dropped at the next decode step: their rows stop, their future
raises `Abandoned`. The first request after an idle spell waits `window_s` for company.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from workers.inference.types import Row, RowOutput

log = logging.getLogger(__name__)
RunBatch = Callable[[list[Row], Callable[[], bool]], None]
INTERACTIVE, BATCH = 0, 1  # priorities: lower is served first


class BatcherClosed(RuntimeError):
    """The engine was evicted or shut down; get a fresh one from the cache."""


class Abandoned(RuntimeError):
    """The request's caller has gone or its deadline passed; its rows were stopped."""


@dataclass(eq=False)
class Request:
    """One caller's rows and how to reach it: its tenant, priority, cancel flag, deadline
    (wall-clock seconds) and an optional per-step callback (token streaming)."""

    rows: list[Row]
    tenant: str = ""
    priority: int = INTERACTIVE
    deadline: float | None = None
    on_step: Callable[[Request], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)

    def abandoned(self) -> bool:
        """True once the caller has gone or the deadline has passed."""
        return self.cancel.is_set() or (self.deadline is not None and time.time() > self.deadline)

    @property
    def finished(self) -> bool:
        return all(row.done for row in self.rows)

    def outputs(self) -> list[RowOutput]:
        return [RowOutput(token_ids=list(r.generated), text=r.text or "", finish_reason=r.finish_reason or "length",
                          logprobs=r.logprobs, prompt_logprobs=r.prompt_logprobs) for r in self.rows]


@dataclass
class BatchStats:
    """Counters the engine exposes (tests check batching, slicing and cancellation)."""

    calls: int = 0  # run_batch calls (decode slices)
    requests: int = 0  # requests served to the end
    rows: int = 0  # rows decoded (counted per slice)
    max_requests_per_call: int = 0
    abandoned: int = 0  # requests dropped because their caller went away or timed out


class MicroBatcher:
    """Active requests plus one worker thread that schedules them into decode slices."""

    def __init__(self, run_batch: RunBatch, window_s: float = 0.005, max_rows: int = 64, name: str = "engine"):
        self.run_batch = run_batch
        self.window_s = window_s
        self.max_rows = max_rows
        self.stats = BatchStats()
        self._active: list[Request] = []
        self._closed = False
        self._arrived = False  # a request came in since the current slice was picked
        self._turn = 0  # rotates which tenant is served first
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Row], *, tenant: str = "", priority: int = INTERACTIVE,
               deadline: float | None = None, on_step: Callable[[Request], None] | None = None) -> Request:
        """Queue rows; the request's future resolves to their outputs, in order."""
        request = Request(rows, tenant, priority, deadline, on_step)
        for row in rows:
            row.request = request
        with self._cond:
            if self._closed:
                raise BatcherClosed("this engine was unloaded")
            self._active.append(request)
            self._arrived = True
            self._cond.notify()
        return request

    def close(self) -> None:
        """Stop after serving everything already queued (does not wait)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        idle = True
        while True:
            with self._cond:
                while not self._active and not self._closed:
                    self._cond.wait()
                    idle = True
                if not self._active:
                    return
            if idle and self.window_s > 0:
                time.sleep(self.window_s)  # let concurrent callers join the first slice
            idle = False
            with self._cond:
                self._settle()
                rows = self._pick()
                self._arrived = False
            if rows:
                self._run(rows)
            with self._cond:
                self._settle()

    def _pick(self) -> list[Row]:
        """Up to max_rows unfinished rows: by priority, round-robin between tenants."""
        chosen: list[Row] = []
        for priority in sorted({r.priority for r in self._active}):
            by_tenant: dict[str, list[Row]] = {}
            for request in self._active:
                if request.priority == priority:
                    by_tenant.setdefault(request.tenant, []).extend(row for row in request.rows if not row.done)
            queues = [by_tenant[t] for t in _rotated(sorted(by_tenant), self._turn)]
            depth = 0
            while len(chosen) < self.max_rows and any(depth < len(q) for q in queues):
                for rows in queues:
                    if depth < len(rows) and len(chosen) < self.max_rows:
                        chosen.append(rows[depth])
                depth += 1
            if chosen:
                break  # lower priorities wait: an interactive request decodes without batch rows
        self._turn += 1
        return chosen

    def _yield_now(self, rows: list[Row]) -> Callable[[], bool]:
        """For run_batch: True when the slice should end so that the mix can change."""
        picked = {id(row) for row in rows}

        def check() -> bool:
            with self._cond:
                self._settle()  # answer requests that finished in this slice at once
                if self._arrived:
                    self._arrived = False
                    if any(id(row) not in picked for row in self._pick_preview()):
                        return True
                finished = sum(row.done for row in rows)
                if 2 * finished >= len(rows) and finished:
                    return any(not row.done and id(row) not in picked for r in self._active for row in r.rows)
            return False

        return check

    def _pick_preview(self) -> list[Row]:
        turn = self._turn
        try:
            return self._pick()  # what the next slice would take
        finally:
            self._turn = turn

    def _run(self, rows: list[Row]) -> None:
        requests = {id(row.request): row.request for row in rows}
        try:
            self.run_batch(rows, self._yield_now(rows))
        except Exception as error:  # noqa: BLE001 - every caller in the slice gets the error
            log.exception("batched generation failed")
            with self._cond:
                for request in requests.values():
                    self._active.remove(request)
                    request.future.set_exception(error)
            return
        self.stats.calls += 1
        self.stats.rows += len(rows)
        self.stats.max_requests_per_call = max(self.stats.max_requests_per_call, len(requests))

    def _settle(self) -> None:
        """Resolve finished requests and drop abandoned ones (called holding the lock)."""
        for request in list(self._active):
            if request.abandoned():
                for row in request.rows:
                    if not row.done:
                        row.finish_reason = "cancelled"
                self._active.remove(request)
                self.stats.abandoned += 1
                request.future.set_exception(Abandoned("the caller has gone or its deadline passed"))
            elif request.finished:
                self._active.remove(request)
                self.stats.requests += 1
                request.future.set_result(request.outputs())


def _rotated(items: list, turn: int) -> list:
    if not items:
        return items
    shift = turn % len(items)
    return items[shift:] + items[:shift]
