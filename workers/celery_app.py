"""The Celery app: configuration, queues, and the `Broker` the API and reaper publish with.

The broker only wakes workers; the job row in the database is the truth. Hence:
acks_late + reject_on_worker_lost (a message outlives a crashed worker), prefetch 1 and one
process per worker (`-c 1`: a GPU runs one job), JSON only, task arguments are ids only.
No result backend: a job's outcome is its row.

Embedded default broker: kombu's SQLAlchemy transport on a SQLite file (`sqla+sqlite:///`),
which needs no server and survives restarts (messages are rows). It polls once a second.
Production: Redis (AOF on, noeviction) via AMFT_BROKER_URL=redis://...

Workers start with `celery -A workers.celery_app worker -Q train -c 1`. This module imports
no torch, so the API can publish with it.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from service.settings import Settings, get_settings

TRAIN_TASK = "amft.train"
QUEUES = ("train", "inference")
# Redis re-delivers an unacked message after this long; a long job would then get a duplicate
# (harmless: the claim refuses it) so keep it well above a typical job's length.
REDIS_VISIBILITY_TIMEOUT = 24 * 3600


def make_celery(settings: Settings) -> Celery:
    """A Celery app for this deployment's broker."""
    app = Celery("amft", broker=settings.resolved_broker_url, include=["workers.tasks", "workers.worker_hooks", "workers.inference.tasks", "workers.lora_merge"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="train",
        task_routes={TRAIN_TASK: {"queue": "train"}},
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def _transport_options(settings: Settings) -> dict:
    if not settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        return {}  # the SQLAlchemy transport passes its options to create_engine: add none
    options: dict = {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT}
    if settings.broker_prefix:
        options["global_keyprefix"] = settings.broker_prefix
    return options


class Broker:
    """What the API and the reaper need from Celery: publish a job, check the connection."""

    def __init__(self, settings: Settings):
        self.app = make_celery(settings)

    def publish_train(self, job_id: str) -> None:
        """Send the train task for a committed job."""
        try:
            self.app.send_task(TRAIN_TASK, args=[job_id], queue="train")
        except AttributeError:
            # kombu's SQLAlchemy transport (the embedded default), after a transient database
            # error such as a locked SQLite file or two processes creating its tables at once,
            # retries on a channel it has already closed and fails here. A new connection works;
            # without this the job would wait for the reaper (minutes).
            with self.app.connection_for_write() as connection:
                self.app.send_task(TRAIN_TASK, args=[job_id], queue="train", connection=connection)

    def ping(self, timeout: float = 2.0) -> None:
        """Raise if the broker cannot be reached within about `timeout` seconds."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)


app = make_celery(get_settings())
