"""Which queues have a live worker (issue 13, item 12): workers heartbeat into the database
and `/readyz` is "not ready" for a queue whose newest heartbeat is stale.

One row per (worker, queue). A worker's main process writes its rows every
`worker_heartbeat_seconds` from a thread (`PresenceBeat`) and deletes them on a warm
shutdown, so a stopped worker shows at once; a killed or frozen one shows once its
heartbeat is older than `worker_stale_seconds`. The database is the one place the API
processes and every worker host can all see (the broker's own worker events are off:
`--without-gossip --without-heartbeat`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta

from sqlalchemy import String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Database
from service.models import Base, UTCDateTime, utcnow

log = logging.getLogger(__name__)
FORGET_AFTER = timedelta(days=1)  # rows of workers long gone are pruned by any live worker's beat


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"

    worker: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery node name
    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


def beat(db: Database, worker: str, queues: list[str], started_at: datetime) -> None:
    """Record that `worker` is alive and consuming `queues` now."""
    now = utcnow()
    with db.transaction() as session:
        for queue in queues:
            row = session.get(WorkerHeartbeat, (worker, queue))
            if row is None:
                session.add(WorkerHeartbeat(worker=worker, queue=queue, host=socket.gethostname(), pid=os.getpid(),
                                            started_at=started_at, last_seen_at=now))
            else:
                row.last_seen_at = now
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at < now - FORGET_AFTER))


def forget(db: Database, worker: str) -> None:
    """Remove `worker`'s rows (a warm shutdown: it consumes nothing from now on)."""
    with db.transaction() as session:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker == worker))


def queue_problems(db: Database, queues: list[str], stale_seconds: float) -> dict[str, str | None]:
    """For each queue: None if a worker's heartbeat is fresh, else why it counts as unserved."""
    with db.read() as session:
        newest = dict(session.execute(
            select(WorkerHeartbeat.queue, func.max(WorkerHeartbeat.last_seen_at))
            .where(WorkerHeartbeat.queue.in_(queues)).group_by(WorkerHeartbeat.queue)
        ).all())
    problems = {}
    for queue in queues:
        seen = newest.get(queue)
        if seen is None:
            problems[queue] = "no worker has served this queue"
            continue
        if seen.tzinfo is None:  # func.max bypasses the column type on some dialects
            seen = seen.replace(tzinfo=utcnow().tzinfo)
        age = (utcnow() - seen).total_seconds()
        problems[queue] = None if age <= stale_seconds else f"no live worker (last heartbeat {age:.0f} s ago)"
    return problems


class PresenceBeat:
    """A daemon thread that calls `beat` every `interval` seconds until `stop()`, which
    also forgets the worker. A failed beat (e.g. the database restarting) is retried."""

    def __init__(self, db: Database, worker: str, queues: list[str], interval: float):
        self.db, self.worker, self.queues, self.interval = db, worker, queues, interval
        self.started_at = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amft-presence", daemon=True)

    def start(self) -> PresenceBeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            forget(self.db, self.worker)
        except Exception:  # noqa: BLE001 - the rows go stale on their own
            log.warning("could not remove worker %s's heartbeat rows", self.worker, exc_info=True)

    def _run(self) -> None:
        while True:
            try:
                beat(self.db, self.worker, self.queues, self.started_at)
            except Exception:  # noqa: BLE001 - a database blip; /readyz shows it if it lasts
                log.warning("worker heartbeat failed", exc_info=True)
            if self._stop.wait(self.interval):
                return
