"""The Server-Sent Events stream: live metric points and events, resumable by Last-Event-ID.
The worker side is driven through the real service functions a worker uses."""

from __future__ import annotations

import json
import threading
import time

import pytest

from service import lifecycle, metrics
from service.db import get_database
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.timeout(60)


def read_stream(client, job_id: str, last_event_id: str | None = None) -> list[dict]:
    """All messages of the stream until its `end` message."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    messages, current = [], {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    messages.append(current)
                    if current.get("event") == "end":
                        return messages
                current = {}
                continue
            field, _, value = line.partition(":")
            if field in ("id", "event", "data"):
                current[field] = value.strip()
    return messages


def test_stream_is_live_and_resumes(pg_api):
    db = get_database(pg_api.settings.resolved_database_url)
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]
        held = lifecycle.claim(db, job_id, "test-worker", lease_seconds=30)

        def train():
            for step in (1, 2, 3):
                time.sleep(0.3)  # the stream is already open: these arrive live
                metrics.record_step(db, held, {"step": step, "mu": 1.0 - step / 10, "phase": "main"})
            lifecycle.record_checkpoint(db, held, 3, f"jobs/{job_id}/checkpoints/step-000003")
            lifecycle.finish(db, held, cancelled=False)

        writer = threading.Thread(target=train)
        writer.start()
        messages = read_stream(client, job_id)
        writer.join()
        points = [json.loads(m["data"]) for m in messages if m["event"] == "metrics"]
        assert [(p["step"], p["mu"]) for p in points] == [(1, 0.9), (2, 0.8), (3, 0.7)]
        kinds = [json.loads(m["data"])["kind"] for m in messages if m["event"] == "event"]
        assert kinds == ["created", "started", "checkpoint", "succeeded"]
        assert json.loads(messages[-1]["data"]) == {"status": "succeeded"}

        after_step_2 = next(m["id"] for m in messages if m["event"] == "metrics" and json.loads(m["data"])["step"] == 2)
        resumed = read_stream(client, job_id, last_event_id=after_step_2)
        seen = [(m["event"], json.loads(m["data"]).get("step") or json.loads(m["data"]).get("kind")) for m in resumed]
        assert ("metrics", 1) not in seen and ("metrics", 2) not in seen and ("metrics", 3) in seen
        assert seen[-1] == ("end", None)

        bad = client.get(f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "x"})
        assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]
