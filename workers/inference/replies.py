"""How a generation result gets back from the inference worker to the API process.

The Celery app keeps no result backend (a job's outcome is its row), and Celery's Redis
result consumer shares one pub/sub connection that is not safe across the API's request
threads. So replies take their own small channel, keyed by the task id:

- Redis broker (production): the worker RPUSHes the JSON reply to a key that expires;
  the API BLPOPs it with the request's timeout, waking the moment it arrives.
- Embedded default (SQLite broker, one machine): the worker writes
  `<home>/inference-replies/<task id>.json` atomically (write + rename); the API polls
  for it every 10 ms.

A streamed request gets several messages on its channel, in order: text deltas while
decoding, then the reply. Message `seq` (0, 1, ...) is the list's next item on Redis and
its own file (`<task id>.<seq>.json`) in the embedded mode.

The other way, `cancel(task_id)` tells the worker that the caller has gone (client
disconnected or the API's timeout passed): a Redis key, or a `<task id>.cancel` file. The
worker polls `cancelled(task_id)` while the request runs and stops its rows.

No torch here: the API imports this module.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from service.settings import Settings

REPLY_TTL_SECONDS = 600
POLL_SECONDS = 0.01
BLPOP_SLICE_SECONDS = 5.0


class RedisReplies:
    """Replies as short-lived Redis lists (BLPOP wakes the waiter at once)."""

    def __init__(self, url: str, prefix: str):
        import redis

        # BLPOP waits in slices shorter than the socket timeout (redis-py has a default one).
        self.client = redis.Redis.from_url(url, socket_timeout=BLPOP_SLICE_SECONDS + 5)
        self.prefix = prefix + "amft:inference-reply:"

    def put(self, task_id: str, reply: dict, seq: int = 0) -> None:
        """Post message `seq` of a task (a list keeps them in order, so seq is implied)."""
        key = self.prefix + task_id
        with self.client.pipeline() as pipe:
            pipe.rpush(key, json.dumps(reply))
            pipe.expire(key, REPLY_TTL_SECONDS)
            pipe.execute()

    def cancel(self, task_id: str) -> None:
        """Tell the worker that nobody waits for this task any more."""
        self.client.set(self.prefix + "cancel:" + task_id, b"1", ex=REPLY_TTL_SECONDS)

    def cancelled(self, task_id: str) -> bool:
        return bool(self.client.exists(self.prefix + "cancel:" + task_id))

    def wait(self, task_id: str, timeout: float, seq: int = 0) -> dict | None:
        """The next message (`seq` is implied by the list's order), or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            item = self.client.blpop([self.prefix + task_id], timeout=max(min(remaining, BLPOP_SLICE_SECONDS), 0.01))
            if item is not None:
                return json.loads(item[1])


class FileReplies:
    """Replies as files in the shared home folder (the embedded, single-machine mode)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def put(self, task_id: str, reply: dict, seq: int = 0) -> None:
        """Post message `seq` of a task as its own file (written whole, then renamed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.folder / f".{task_id}.{uuid.uuid4().hex}.tmp"
        temp.write_text(json.dumps(reply), encoding="utf-8")
        os.replace(temp, self._path(task_id, seq))

    def cancel(self, task_id: str) -> None:
        """Tell the worker that nobody waits for this task any more (a marker file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path(task_id).with_suffix(".cancel").touch()

    def cancelled(self, task_id: str) -> bool:
        marker = self._path(task_id).with_suffix(".cancel")
        if not marker.exists():
            return False
        if time.time() - marker.stat().st_mtime > REPLY_TTL_SECONDS:
            marker.unlink(missing_ok=True)
        return True

    def wait(self, task_id: str, timeout: float, seq: int = 0) -> dict | None:
        """Message `seq` of a task, or None after `timeout` seconds."""
        path = self._path(task_id, seq)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(POLL_SECONDS)
                continue
            path.unlink(missing_ok=True)
            return reply

    def _path(self, task_id: str, seq: int = 0) -> Path:
        if not task_id.replace("-", "").isalnum():
            raise ValueError("task ids are alphanumeric")
        return self.folder / (f"{task_id}.json" if seq == 0 else f"{task_id}.{int(seq)}.json")


def reply_channel(settings: Settings) -> RedisReplies | FileReplies:
    """The channel for this deployment's broker."""
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        return RedisReplies(url, settings.broker_prefix)
    return FileReplies(settings.home.resolve() / "inference-replies")
