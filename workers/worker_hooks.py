"""Worker-process glue, wired through Celery signals:

- the reaper runs as a thread in each worker's main process;
- on a warm shutdown (SIGTERM or Ctrl-C) the main process passes SIGTERM to its pool
  children, whose running job then checkpoints and goes back to the queue (see
  workers.train_job) instead of holding the worker until the job ends.
"""

from __future__ import annotations

import os
import signal

from billiard.process import active_children
from celery.signals import worker_ready, worker_shutting_down
from celery.worker import state as worker_state

from service.db import get_database
from service.reaper import Reaper
from service.settings import get_settings

_reaper: Reaper | None = None


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    global _reaper
    from workers.celery_app import Broker

    settings = get_settings()
    db = get_database(settings.resolved_database_url)
    _reaper = Reaper(db, Broker(settings).publish_train, settings.reaper_seconds, settings.requeue_unclaimed_seconds)
    _reaper.start()


@worker_shutting_down.connect
def _stop_jobs(sig=None, how=None, **_kwargs) -> None:
    if _reaper is not None:
        _reaper.stop()
    if how == "Warm" and worker_state.active_requests:  # an idle child needs no warning
        for child in active_children():
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
