"""The reaper's loop: a daemon thread running `lifecycle.reap` every few seconds.

It runs inside every API process and every worker's main process. Several reapers at once
are safe: each transition is a conditional UPDATE that only one of them wins.
"""

from __future__ import annotations

import logging
import threading

from service.db import Database
from service.lifecycle import Publish, reap

log = logging.getLogger(__name__)


class Reaper:
    """Start with `start()`, stop with `stop()`; a failed pass is logged and retried."""

    def __init__(self, db: Database, publish: Publish, interval: float, requeue_unclaimed_seconds: float):
        self.db, self.publish = db, publish
        self.interval, self.requeue_unclaimed_seconds = interval, requeue_unclaimed_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amft-reaper", daemon=True)

    def start(self) -> Reaper:
        if self.interval > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:  # a pass at once (a restarted service resumes released jobs), then every interval
            try:
                counts = reap(self.db, self.publish, self.requeue_unclaimed_seconds)
                if any(counts.values()):
                    log.info("reaper: %s", counts)
            except Exception:  # noqa: BLE001 - e.g. the database restarting; try again next tick
                log.warning("reaper pass failed", exc_info=True)
            if self._stop.wait(self.interval):
                return
