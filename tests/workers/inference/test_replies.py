"""The reply channel carries a streamed request's messages in order, on both brokers."""

import uuid

import pytest

from tests.conftest import REDIS_URL
from workers.inference.replies import FileReplies, RedisReplies


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_messages_arrive_in_order_then_the_reply(kind, tmp_path, redis_prefix):
    channel = FileReplies(tmp_path) if kind == "file" else RedisReplies(REDIS_URL, f"{redis_prefix}{uuid.uuid4().hex[:6]}:")
    task = uuid.uuid4().hex
    messages = [{"deltas": [[0, "He"]]}, {"deltas": [[0, "llo"], [1, "!"]]}, {"results": []}]
    for seq, message in enumerate(messages):
        channel.put(task, message, seq)
    assert [channel.wait(task, 1.0, seq) for seq in range(3)] == messages
    assert channel.wait(task, 0.05, 3) is None  # nothing more
