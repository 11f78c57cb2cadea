"""The Server-Sent Events stream of a job: new job events and metric points as they land.

Each message's id is a cursor `<last step sent>-<last event id sent>`, so a client that
reconnects with `Last-Event-ID` continues exactly where it stopped. Message types:
`event` (a job event), `metrics` (one step's metrics), `end` (the job finished; the stream
closes after everything before it was sent).
"""

from __future__ import annotations

import json
from typing import AsyncIterator

import anyio
from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.db import Database
from service.errors import InvalidInput
from service.jobs import changes_since

POLL_SECONDS = 0.5


def wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def parse_cursor(last_event_id: str | None) -> tuple[int, int]:
    """`<step>-<event id>` -> (step, event id); no header means from the start."""
    if not last_event_id:
        return 0, 0
    try:
        step, event = (int(part) for part in last_event_id.split("-"))
        if not (0 <= step < 2**31 and 0 <= event < 2**63):  # the columns' range (issue 6, case 22)
            raise ValueError("out of range")
        return step, event
    except ValueError as error:
        raise InvalidInput("Last-Event-ID: expected `<step>-<event id>` as sent in a previous message's id") from error


def job_stream(db: Database, tenant_id: str, job_id: str, last_event_id: str | None) -> EventSourceResponse:
    """The streaming response for one job."""
    cursor = parse_cursor(last_event_id)
    return EventSourceResponse(_messages(db, tenant_id, job_id, *cursor), ping=15)


async def _messages(db: Database, tenant_id: str, job_id: str, step: int, event_id: int) -> AsyncIterator[ServerSentEvent]:
    while True:
        changes = await anyio.to_thread.run_sync(changes_since, db, tenant_id, job_id, step, event_id)
        for point_step, text in changes.points:
            step = point_step
            yield ServerSentEvent(text, event="metrics", id=f"{step}-{event_id}")
        for event in changes.events:
            event_id = event["id"]
            data = dict(event, created_at=event["created_at"].isoformat())
            yield ServerSentEvent(json.dumps(data), event="event", id=f"{step}-{event_id}")
        if changes.finished and not changes.events and not changes.points:
            yield ServerSentEvent(json.dumps({"status": changes.status}), event="end", id=f"{step}-{event_id}")
            return
        if not changes.events and not changes.points:
            await anyio.sleep(POLL_SECONDS)
