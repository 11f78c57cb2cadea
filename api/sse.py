"""The Server-Sent Events stream of a job: new job events and metric points as they land.

Each message's id is a cursor `<last step sent>-<last event id sent>`, so a client that
reconnects with `Last-Event-ID` continues exactly where it stopped. Message types:
`event` (a job event), `metrics` (one step's metrics), `end` (the job finished; the stream
closes after everything before it was sent). Live changes come from the job's shared feed
(api/feeds.py), so open streams cost the database one poll per job, not one per stream.
"""

from __future__ import annotations

import json
import re
from typing import AsyncIterator

import anyio
from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.feeds import JobFeeds, items_of
from service.errors import InvalidInput
from service.jobs import changes_since

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


def job_stream(feeds: JobFeeds, tenant_id: str, job_id: str, last_event_id: str | None) -> EventSourceResponse:
    """The streaming response for one job (whose owner the caller was checked to be)."""
    cursor = parse_cursor(last_event_id)
    return EventSourceResponse(_messages(feeds, tenant_id, job_id, *cursor), ping=15)


async def _messages(feeds: JobFeeds, tenant_id: str, job_id: str, step: int, event_id: int) -> AsyncIterator[ServerSentEvent]:
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
                await feed.wait(seq)
