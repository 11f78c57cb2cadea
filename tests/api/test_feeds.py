"""Shared job feeds (api/feeds.py): many SSE streams of one job cost one database poll per
POLL_SECONDS, and each stream still gets every step exactly once, in order."""

from __future__ import annotations

import json
import threading
import time

import anyio
import pytest

from api import feeds as feeds_module
from api.feeds import Item, JobFeed, JobFeeds
from api.sse import _messages
from service import lifecycle, metrics
from service.auth import create_key
from service.db import get_database
from service.specs import JobSpec

pytestmark = pytest.mark.timeout(60)
STREAMS, STEPS = 30, 8


def test_many_streams_share_one_poll_and_miss_nothing(pg_url, monkeypatch):
    db = get_database(pg_url)
    tenant = create_key(db, "alice")[1].tenant_id
    job, _ = lifecycle.create_job(db, tenant, JobSpec(), None, lambda _id: None, 3)
    held = lifecycle.claim(db, job.id, "test-worker", lease_seconds=30)
    polls = []
    real_changes_since = feeds_module.changes_since
    monkeypatch.setattr(feeds_module, "changes_since", lambda *a: polls.append(time.monotonic()) or real_changes_since(*a))

    def train():
        for step in range(1, STEPS + 1):
            time.sleep(0.2)
            metrics.record_step(db, held, {"step": step, "mu": 0.5})
        lifecycle.finish(db, held, cancelled=False)

    async def stream(feeds: JobFeeds, out: list) -> None:
        async for message in _messages(feeds, tenant, job.id, 0, 0):
            out.append((message.event, json.loads(message.data)))

    async def main() -> list[list]:
        feeds, outputs = JobFeeds(db), [[] for _ in range(STREAMS)]
        async with anyio.create_task_group() as group:
            for out in outputs:
                group.start_soon(stream, feeds, out)
            writer = threading.Thread(target=train)
            writer.start()
        writer.join()
        assert feeds._feeds == {}, "a feed outlived its streams"
        return outputs

    outputs = anyio.run(main)
    for out in outputs:
        assert [data["step"] for kind, data in out if kind == "metrics"] == list(range(1, STEPS + 1))
        assert [data["kind"] for kind, data in out if kind == "event"][-1] == "succeeded"
        assert out[-1] == ("end", {"status": "succeeded"})
    # Per-stream polling would put STREAMS polls in every POLL_SECONDS; the shared feed never
    # polls twice within one (each stream's catch-up read is not counted). A slow machine
    # only spreads the polls further apart.
    gaps = [later - earlier for earlier, later in zip(polls, polls[1:])]
    assert polls and all(gap >= 0.9 * feeds_module.POLL_SECONDS for gap in gaps), gaps


def test_position_after_a_trimmed_log_sends_the_stream_back_to_the_database():
    feed = JobFeed(db=None, tenant_id="t", job_id="j")
    feed.position(0, 0)  # the first stream sets the feed's cursor
    feed.log = [Item("metrics", step, 0, "{}") for step in range(11, 21)]
    assert feed.position(12, 0) == 2  # inside the log: the first newer item
    assert feed.position(25, 0) == feed.end  # nothing newer yet
    feed.start = 10  # items 1..10 were trimmed: a stream at step 3 cannot resume from the log
    assert feed.position(3, 0) < feed.start
    assert feed.position(10, 0) == feed.start - 1  # cannot tell whether step 10 -> 11 is contiguous: re-read
    assert feed.position(11, 0) == feed.start + 1
