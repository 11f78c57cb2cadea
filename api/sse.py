"""The Server-Sent Events stream of a job: new job events and metric points as they land.

Each message's id is a cursor `<last step sent>-<last event id sent>`, so a client that
reconnects with `Last-Event-ID` continues exactly where it stopped. Message types:
`event` (a job event), `metrics` (one step's metrics), `end` (the job finished; the stream
closes after everything before it was sent), `error` ({"detail", "problems"}: the key was
revoked or the stream failed; the stream closes). Live changes come from the job's shared feed
(api/feeds.py), so open streams cost the database one poll per job, not one per stream.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import AsyncIterator, Callable

import anyio
from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.feeds import JobFeeds, items_of
from service.errors import InvalidInput, Unauthorized
from service.jobs import changes_since

log = logging.getLogger(__name__)

CURSOR = re.compile(r"([0-9]{1,10})-([0-9]{1,19})")  # a message id: <step>-<event id>


def wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def parse_cursor(last_event_id: str | None) -> tuple[int, int]:
    """`<step>-<event id>` -> (step, event id); no header means from the start."""
    if not last_event_id:
        return 0, 0
    # Digits only, whole header (int() alone also took " 5", "+5", "5_0" and "٥").
    match = CURSOR.fullmatch(last_event_id)
    step, event = (int(match[1]), int(match[2])) if match else (-1, -1)
    if not (0 <= step < 2**31 and 0 <= event < 2**63):  # the columns' range (issue 6, case 22)
        raise InvalidInput("Last-Event-ID: expected `<step>-<event id>` as sent in a previous message's id")
    return step, event


def job_stream(
    feeds: JobFeeds, tenant_id: str, job_id: str, last_event_id: str | None,
    key_check: Callable[[], object], recheck_seconds: float,
) -> EventSourceResponse:
    """The streaming response for one job (whose owner the caller was checked to be).

    `key_check` (blocking; raises Unauthorized once the caller's key is revoked) runs every
    `recheck_seconds` while the stream is open: a revoked key ends the stream (issue 13,
    item 5) with an `error` message in the documented error shape, as a failure inside the
    stream does, since the 200 and its headers are sent by then."""
    cursor = parse_cursor(last_event_id)
    messages = _messages(feeds, tenant_id, job_id, *cursor, key_check, recheck_seconds)
    return EventSourceResponse(_ending_on_error(messages), ping=15)


def error_message(problem: str) -> ServerSentEvent:
    """An `error` message: {"detail", "problems"} as in every error body (api/errors.py)."""
    return ServerSentEvent(json.dumps({"detail": problem, "problems": [problem]}), event="error")


async def _ending_on_error(messages: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    try:
        async for message in messages:
            yield message
    except Unauthorized as error:
        yield error_message(error.problems[0])
    except (OperationalError, InterfaceError, PoolTimeout):
        yield error_message("the job database is unavailable right now; reconnect shortly with Last-Event-ID")
    except Exception:  # noqa: BLE001 - logged here; the client gets the error shape, not a cut connection
        log.exception("event stream failed")
        yield error_message("internal server error in the event stream: reconnect with Last-Event-ID")


async def _messages(
    feeds: JobFeeds, tenant_id: str, job_id: str, step: int, event_id: int,
    key_check: Callable[[], object] | None = None, recheck_seconds: float = 30.0,
) -> AsyncIterator[ServerSentEvent]:
    next_check = time.monotonic() + recheck_seconds if key_check else math.inf
    with feeds.follow(tenant_id, job_id) as feed:
        seq = None  # our place in the feed's log; None until caught up from the database
        while True:
            if seq is None or seq < feed.start:
                changes = await anyio.to_thread.run_sync(changes_since, feed.db, tenant_id, job_id, step, event_id)
                items, status = items_of(changes, step, event_id), changes.status if changes.finished else None
                if not items and not status:
                    seq = feed.position(step, event_id)
            else:
                items, status = [item for item in feed.read(seq) if item.newer_than(step, event_id)], feed.status
                seq = feed.end
            for item in items:
                step, event_id = item.step, item.event_id
                yield ServerSentEvent(item.data, event=item.kind, id=f"{step}-{event_id}")
            if status and not items:
                yield ServerSentEvent(json.dumps({"status": status}), event="end", id=f"{step}-{event_id}")
                return
            if not items and seq is not None and seq >= feed.start:
                with anyio.move_on_after(max(0.0, next_check - time.monotonic())):
                    await feed.wait(seq)
            if time.monotonic() >= next_check:
                await anyio.to_thread.run_sync(key_check)  # Unauthorized ends the stream
                next_check = time.monotonic() + recheck_seconds
