"""Worker-process glue, wired through Celery signals:

- the reaper runs as a thread in each worker's main process;
- on a warm shutdown (SIGTERM or Ctrl-C) the main process passes SIGTERM to its pool
  children, whose running job then checkpoints and goes back to the queue (see
  workers.train_job) instead of holding the worker until the job ends;
- the main process heartbeats into the database for each queue it consumes, and removes
  its rows on shutdown (service.worker_presence; /readyz reads them);
- a pool child dies with its worker (SIGKILL at the parent's death): a killed worker leaves
  no orphan running a job; the job's lease expires and the reaper re-queues it.
"""

from __future__ import annotations

import os
import signal

from billiard.process import active_children
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from celery.worker import state as worker_state

from service.db import get_database
from service.reaper import Reaper
from service.settings import get_settings
from service.worker_presence import PresenceBeat
from workers.parent_death import die_with_parent

_reaper: Reaper | None = None
_presence: PresenceBeat | None = None
_MAIN_PID = os.getpid()  # imported by the worker's main process, before its pool forks


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    global _reaper
    from workers.celery_app import Broker

    settings = get_settings()
    db = get_database(settings.resolved_database_url)
    _reaper = Reaper(db, Broker(settings).publish_train, settings.reaper_seconds, settings.requeue_unclaimed_seconds)
    _reaper.start()
    _start_presence(sender, db, settings.worker_heartbeat_seconds)


def _start_presence(consumer, db, interval: float) -> None:
    global _presence
    queues = sorted(consumer.app.amqp.queues.consume_from)
    _presence = PresenceBeat(db, consumer.hostname, queues, interval).start()


@worker_process_init.connect
def _die_with_worker(**_kwargs) -> None:
    if os.getpid() != _MAIN_PID:  # a forked pool child (the solo pool sends this in the main process)
        die_with_parent(signal.SIGKILL)


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
    if _presence is not None:
        _presence.stop()  # from now on this worker consumes nothing: /readyz sees it at once
