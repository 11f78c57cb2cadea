"""Live feeds of a job's changes, shared by every SSE stream of that job in one API process.

A stream used to poll the database every POLL_SECONDS on its own, so 100 open dashboards
on one job were 200 queries a second competing with the training (issue 6, case 12). Now
each followed job has one feed: whichever of its streams finds the feed's last poll older
than POLL_SECONDS runs the single query, appends what it found to a short in-memory log
and wakes the other streams, which read the log. A stream that starts, or falls behind the
log, reads its backlog from the database itself and then follows the feed.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import anyio

from service.db import Database
from service.jobs import Changes, changes_since

POLL_SECONDS = 0.5
LOG_ITEMS = 2000  # kept per feed; a stream further behind than this re-reads the database


@dataclass(frozen=True)
class Item:
    """One stream message, with the stream's cursor (step, event id) after it."""

    kind: str  # "metrics" or "event"
    step: int
    event_id: int
    data: str

    def newer_than(self, step: int, event_id: int) -> bool:
        return self.step > step if self.kind == "metrics" else self.event_id > event_id


def items_of(changes: Changes, step: int, event_id: int) -> list[Item]:
    """`changes` after the cursor (step, event_id) as stream items, in stream order."""
    items = []
    for point_step, text in changes.points:
        step = point_step
        items.append(Item("metrics", step, event_id, text))
    for event in changes.events:
        event_id = event["id"]
        items.append(Item("event", step, event_id, json.dumps(dict(event, created_at=event["created_at"].isoformat()))))
    return items


class JobFeed:
    """The shared log of one job's new items. `seq` numbers count items since the feed began."""

    def __init__(self, db: Database, tenant_id: str, job_id: str):
        self.db, self.tenant_id, self.job_id = db, tenant_id, job_id
        self.log: list[Item] = []
        self.start = 0  # seq of log[0]
        self.status: str | None = None  # the final status, once the job ended and all is logged
        self.streams = 0
        self._cursor: tuple[int, int] | None = None  # where the next poll starts
        self._polled_at = -math.inf
        self._polling = False
        self._changed = anyio.Event()

    @property
    def end(self) -> int:
        """The seq the next logged item will get."""
        return self.start + len(self.log)

    def position(self, step: int, event_id: int) -> int:
        """The seq of the first logged item after a stream's cursor (caught up from the
        database). Below `start` when the log was trimmed past it (the stream must read the
        database first). The first stream's cursor is where the feed's polls begin."""
        if self._cursor is None:
            self._cursor = (step, event_id)
        for index, item in enumerate(self.log):
            if item.newer_than(step, event_id):
                return self.start + index - (1 if index == 0 and self.start > 0 else 0)
        return self.end

    def read(self, seq: int) -> list[Item]:
        return self.log[seq - self.start:]

    async def wait(self, seq: int) -> None:
        """Return once an item at `seq` or later is logged, or the job has ended."""
        while seq >= self.end and self.status is None:
            changed = self._changed
            if not self._polling and time.monotonic() - self._polled_at >= POLL_SECONDS:
                await self._poll()
            else:
                with anyio.move_on_after(POLL_SECONDS):
                    await changed.wait()

    async def _poll(self) -> None:
        self._polling = True
        try:
            changes = await anyio.to_thread.run_sync(changes_since, self.db, self.tenant_id, self.job_id, *self._cursor)
        finally:  # a failed or abandoned poll logs nothing; the next one starts from the same cursor
            self._polling, self._polled_at = False, time.monotonic()
        items = items_of(changes, *self._cursor)
        if items:
            self._cursor = (items[-1].step, items[-1].event_id)
        elif changes.finished:
            self.status = changes.status
        self.log += items
        if len(self.log) > LOG_ITEMS:
            dropped = len(self.log) - LOG_ITEMS
            del self.log[:dropped]
            self.start += dropped
        changed, self._changed = self._changed, anyio.Event()
        changed.set()


class JobFeeds:
    """The feeds of the jobs this process streams, each alive while a stream follows it."""

    def __init__(self, db: Database):
        self.db = db
        self._feeds: dict[tuple[str, str], JobFeed] = {}

    @contextmanager
    def follow(self, tenant_id: str, job_id: str) -> Iterator[JobFeed]:
        """The feed of a job the caller owns (checked before), for the length of a stream."""
        key = (tenant_id, job_id)
        feed = self._feeds.get(key)
        if feed is None or feed.status is not None:  # an ended feed stays with its streams
            feed = self._feeds[key] = JobFeed(self.db, tenant_id, job_id)
        feed.streams += 1
        try:
            yield feed
        finally:
            feed.streams -= 1
            if feed.streams == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]
