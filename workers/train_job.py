"""Run one training job inside a worker: claim it, train with hooks that write through the
fenced lifecycle, end it. Called by the Celery task with a job id.

Who ends the job:
- the loop finished: succeeded; it stopped on the cancel flag: cancelled;
- the worker is shutting down (SIGTERM): checkpoint, then back to the queue (released);
- the trainer raised: failed, with the exception as the message;
- this attempt was fenced (its lease expired and the job moved on): nothing, quietly;
- the process died: nothing here; the reaper re-queues it when the lease expires and the
  next attempt resumes from the latest recorded checkpoint;
- a rank of a multi-device group died: released, to resume from the last checkpoint;
- this worker cannot serve the job's resources: declined with an event, back to the queue;
  these two cost an attempt each: past max_attempts the job fails (rank_died, unservable).
The launcher (in-process, torchrun or Ray; workers.launchers) is chosen once at claim.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service import lifecycle, metrics, retention
from service.db import Database, get_database
from service.errors import Fenced
from service.redact import redact_paths
from service.settings import Settings, get_settings
from service.specs import JobSpec, spec_error_lines
from workers.judges import Judge
from workers.trainer.hooks import TrainerHooks
from workers.tracking import Export

log = logging.getLogger(__name__)
T = TypeVar("T")
SHUTTING_DOWN = threading.Event()  # set by SIGTERM during a job (a warm worker shutdown); stays set
# Errors of an unreachable database (restart, failover, full pool), worth retrying.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError, PoolTimeout)


def retry_seconds(settings: Settings) -> float:
    """How long a worker retries a write while the database is unreachable: past the lease
    the reaper hands the job on when the database is back, and the retry then gets Fenced."""
    return max(30.0, 2 * settings.lease_seconds)


def retrying(write: Callable[[], T], seconds: float) -> T:
    """Run a database write, retrying it while the database is unreachable for up to
    `seconds` (issue 6, case 7: a PostgreSQL restart must not lose a step or fail the job).
    Every worker write is idempotent (upserts, fenced conditional updates), so retrying
    after a commit whose outcome was lost is safe. Fenced is never retried."""
    deadline, delay = time.monotonic() + seconds, 0.25
    while True:
        try:
            return write()
        except TRANSIENT_DB_ERRORS:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable; retrying the write in %.2fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class Watch:
    """The trainer's hooks for one claimed attempt, plus a heartbeat thread that renews the
    lease between steps (a step, a model load or a checkpoint may outlast the lease)."""

    def __init__(self, db: Database, held: lifecycle.Claim, artifacts_dir: Path, heartbeat_seconds: float,
                 retry_for: float = 30.0, settings: Settings | None = None):
        self.db, self.held, self.artifacts_dir = db, held, artifacts_dir
        self.retry_for = retry_for
        self.cancel = False
        self.fenced = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_seconds,), daemon=True, name="heartbeat")
        # Issue 17: the spec's trackers; a failing one records an event and never fails the job.
        self.judge = None  # workers.judges.Judge for this job's model graders (set by the launcher)
        self.export = Export(held.spec, lifecycle.job_dir(artifacts_dir, held.job_id),
                             lambda kind, message: lifecycle.note(db, held, kind, message), held.job_id, settings)

    def hooks(self) -> TrainerHooks:
        return TrainerHooks(on_metrics=self.on_metrics, on_checkpoint=self.on_checkpoint, should_stop=self.should_stop,
                            on_event=self.on_event, on_samples=self.on_samples, judge=self.judge)

    def on_event(self, kind: str, message: str) -> None:
        self._check_fenced()
        retrying(lambda: lifecycle.note(self.db, self.held, kind, message[:4000]), self.retry_for)

    def on_metrics(self, point: dict) -> None:
        self._check_fenced()
        self.cancel = retrying(lambda: metrics.record_step(self.db, self.held, point), self.retry_for) or self.cancel
        self.export.on_metrics(point)

    def on_samples(self, step: int, rows: list[dict]) -> None:
        self._check_fenced()
        self.export.on_samples(step, rows)  # trackers only: the table is not stored in SQL

    def on_checkpoint(self, step: int, path: Path) -> None:
        self._check_fenced()
        relative = Path(path).resolve().relative_to(self.artifacts_dir)
        retrying(lambda: lifecycle.record_checkpoint(self.db, self.held, step, str(relative)), self.retry_for)
        # Issue 17: the spec's retention forgets older checkpoints (rows first, then folders).
        for gone in retrying(lambda: retention.prune(self.db, self.held), self.retry_for):
            shutil.rmtree(self.artifacts_dir / gone, ignore_errors=True)

    def should_stop(self) -> bool:
        self._check_fenced()
        return self.cancel or SHUTTING_DOWN.is_set()

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.export.close()

    def _check_fenced(self) -> None:
        if self.fenced:
            raise Fenced(f"job {self.held.job_id} attempt {self.held.attempt} lost its lease")

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.cancel = lifecycle.heartbeat(self.db, self.held) or self.cancel
            except Fenced:
                self.fenced = True
                return
            except Exception:  # noqa: BLE001 - a database blip; the lease has slack, retry
                log.warning("heartbeat for job %s failed", self.held.job_id, exc_info=True)


def run_train_job(job_id: str, settings: Settings | None = None) -> str:
    """Woken by job `job_id`'s message: claim the next job by fair dispatch (usually that
    one) and run it; returns the outcome (for logs and tests)."""
    settings = settings or get_settings()
    db = get_database(settings.resolved_database_url)
    if SHUTTING_DOWN.is_set():  # told to stop during an earlier job: leave this one to others
        lifecycle.decline(db, job_id)
        return "declined"
    # The message only woke this worker: fair dispatch picks the job (issue 13, item 8), so a
    # cancelled job's stale message costs one query or runs the next tenant's job.
    worker = f"{socket.gethostname()}:{os.getpid()}"
    held = lifecycle.claim_next(db, worker, settings.lease_seconds, settings.max_running_jobs_per_tenant)
    if held is None:
        log.info("woken by job %s: no job is claimable now (running, finished, cancelled or held back)", job_id)
        return "not_claimable"
    artifacts = settings.resolved_artifacts_dir
    watch = Watch(db, held, artifacts, settings.heartbeat_seconds, retry_seconds(settings), settings)
    watch.judge = Judge(settings, job_id=held.job_id)
    try:
        with watch, _stop_on_sigterm():
            return _train(db, held, watch, settings, artifacts)
    except Fenced:
        log.warning("job %s attempt %d was fenced; stopping without writing", held.job_id, held.attempt)
        return "fenced"


def _train(db: Database, held: lifecycle.Claim, watch: Watch, settings: Settings, artifacts: Path) -> str:
    try:
        spec = JobSpec.model_validate(held.spec)
    except ValueError as error:  # e.g. the deployment's limits were lowered since submission
        lifecycle.fail(db, held, "invalid_spec", redact_paths("; ".join(spec_error_lines(error)), settings))
        return "failed"
    from workers.launchers import Unservable, choose_launcher

    try:
        launcher = choose_launcher(spec, settings)
    except Unservable as reason:
        retrying(lambda: lifecycle.note(db, held, "declined", str(reason)), watch.retry_for)
        released = retrying(lambda: lifecycle.release(db, held, f"declined: {reason}", "unservable"), watch.retry_for)
        return "declined" if released == "released" else "failed"
    try:
        resume = _usable_resume(db, held, artifacts)
        result = _launch(launcher, spec, lifecycle.job_dir(artifacts, held.job_id), watch, resume, settings)
    except Fenced:
        raise
    except Exception as error:  # noqa: BLE001 - any trainer failure ends the job with its message
        log.exception("job %s failed", held.job_id)
        # The message is the tenant's to read: no absolute server path in it (issue 13, item 5).
        message = redact_paths(f"{type(error).__name__}: {error}", settings)
        retrying(lambda: lifecycle.fail(db, held, "trainer_error", message), watch.retry_for)
        return "failed"
    if result is None:
        reason = "a rank of the job's process group died (the next attempt resumes from the last checkpoint)"
        return retrying(lambda: lifecycle.release(db, held, reason, "rank_died"), watch.retry_for)
    if result.status == "stopped" and SHUTTING_DOWN.is_set() and not watch.cancel:
        reason = f"worker shutting down; checkpoint at step {result.last_step}"
        retrying(lambda: lifecycle.release(db, held, reason), watch.retry_for)
        return "released"
    retrying(lambda: lifecycle.finish(db, held, cancelled=result.status == "stopped"), watch.retry_for)
    return "cancelled" if result.status == "stopped" else "succeeded"


def _launch(launcher: str, spec: JobSpec, job_dir: Path, watch: Watch, resume: Path | None, settings: Settings):
    """Start the trainer the chosen way; the TrainResult, or None if a rank died."""
    if launcher != "local":
        from workers.launchers import GROUP_LAUNCHERS

        return GROUP_LAUNCHERS[launcher](spec, job_dir, watch, resume, settings)
    from workers.trainer.loop import train  # torch is imported here, in the worker only

    return train(spec, job_dir, watch.hooks(), resume_from=resume)


def _usable_resume(db: Database, held: lifecycle.Claim, artifacts: Path) -> Path | None:
    """The checkpoint to resume from: the claimed (latest recorded) one if its checksums
    verify, else the newest older one of this job that does, else None (start over).

    Issue 6, case 9: a truncated or corrupted latest checkpoint costs one more save
    interval of recomputation, not the whole job. Older folders are all earlier saves of
    this same deterministic run, so any verified one continues the same curve.
    """
    from workers.trainer.checkpoint import CheckpointError, verify_checkpoint

    if not held.resume_path:
        return None
    claimed = artifacts / held.resume_path
    try:
        verify_checkpoint(claimed)
        return claimed
    except CheckpointError as error:
        problem = str(error)
    for folder in sorted(claimed.parent.glob("step-*"), reverse=True):
        step = int(folder.name.removeprefix("step-")) if folder.name[5:].isdigit() else None
        if step is None or step >= held.resume_step:
            continue
        try:
            verify_checkpoint(folder)
        except CheckpointError:
            continue
        lifecycle.note(db, held, "checkpoint_unusable", f"{problem}; resuming from step {step} instead")
        return folder
    lifecycle.note(db, held, "checkpoint_unusable", f"{problem}; no older usable checkpoint, starting over")
    return None


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While the job runs, SIGTERM asks the loop to checkpoint and stop (see worker_hooks);
    a message this process takes afterwards is declined (the reaper republishes it)."""

    def handler(_signum: int, _frame: object) -> None:
        SHUTTING_DOWN.set()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a threads pool): no graceful stop, the lease covers it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

