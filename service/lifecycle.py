"""The job lifecycle: the only module that changes a job's status.

    queued --claim--> running --finish--> succeeded | cancelled
      ^                 |  \\--fail-----> failed
      |                 |   \\-release (worker shutting down; or declined / a rank died:
      |                 |            counted, no attempts left: failed)--> queued
      +--reap (lease expired, attempts left)--+      (no attempts left: failed)
    queued --cancel--> cancelled (at once); running --cancel--> flag, the loop stops

Every change is a conditional UPDATE, so two API processes, reapers and workers can race
safely. `attempt` is a fencing token: `claim` bumps it, and every later write by a worker
(`fence`) requires it unchanged and the job still running; a worker that lost its lease
gets `Fenced` and writes nothing. Celery messages are published only after the commit,
and any lost message is made good by `reap`, which republishes jobs left queued.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import webhooks
from service.continuation import check_parent
from service.data_checks import check_validation_data
from service.db import Database
from service.dispatch import check_queued_quota, next_job_id, wake_tenant_queue
from service.errors import Conflict, Fenced, InvalidInput, NotFound, TooLarge
from service.models import TERMINAL, Checkpoint, File, Job, JobEvent, MetricPoint, utcnow
from service.specs import JobSpec

log = logging.getLogger(__name__)
Publish = Callable[[str], None]  # sends the train task for a job id (workers.celery_app)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # fullmatch: `$` passes "...\n" (issue 13, item 4)


@dataclass(frozen=True)
class Claim:
    """What a worker holds while it runs a job: the fencing token and where to resume."""

    job_id: str
    attempt: int
    spec: dict
    lease_seconds: float
    resume_step: int = 0
    resume_path: str | None = None  # relative to the artifacts folder


# ------------------------------------------------------------------------ API side


def create_job(
    db: Database, tenant_id: str, spec: JobSpec, idempotency_key: str | None, publish: Publish, max_attempts: int,
    max_queued: int = 0, max_spec_bytes: int = 0, artifacts_dir: Path | None = None,
) -> tuple[Job, bool]:
    """Store a new queued job and wake a worker; returns (job, created).

    With an Idempotency-Key, a repeat of the same spec returns the first job (created is
    False) and a different spec under the same key raises InvalidInput. Raises TooLarge
    for a spec over `max_spec_bytes` and TooManyRequests when the tenant already has
    `max_queued` queued jobs (0: no limit). InvalidInput too when the validation data
    lacks a field the job needs (uploads are read from `artifacts_dir` when given).
    """
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidInput("Idempotency-Key must be 1-255 visible ASCII characters (no spaces), e.g. a UUID")
    spec_json = spec.model_dump(mode="json")
    canonical = json.dumps(spec_json, sort_keys=True).encode()
    if max_spec_bytes and len(canonical) > max_spec_bytes:
        raise TooLarge(f"spec: {len(canonical)} bytes as JSON, over this deployment's limit of {max_spec_bytes} "
                       "bytes (AMFT_MAX_SPEC_BYTES); put data in an uploaded file (POST /files), not in the spec")
    spec_hash = hashlib.sha256(canonical).hexdigest()
    try:
        with db.transaction() as session:
            existing = _job_for_key(session, tenant_id, idempotency_key, spec_hash)
            if existing is not None:
                return existing, False
            _check_files(session, tenant_id, spec)
            check_validation_data(spec, artifacts_dir)  # issue 16: not a KeyError at the first meta step
            _check_judges(session, tenant_id, spec)
            check_queued_quota(session, tenant_id, max_queued)
            check_parent(session, tenant_id, spec.model)  # issue 17: job:<id>[:<step>], same tenant
            job = Job(
                id=uuid.uuid4().hex,
                tenant_id=tenant_id,
                status="queued",
                spec=spec_json,
                spec_hash=spec_hash,
                idempotency_key=idempotency_key,
                total_steps=spec.training.total_steps,
                max_attempts=max_attempts,
            )
            session.add(job)
            session.flush()
            _event(session, job.id, 0, "created", f"queued ({spec.method}, {spec.training.total_steps} steps)")
    except IntegrityError:  # a concurrent request with the same key won the insert
        with db.transaction() as session:
            existing = _job_for_key(session, tenant_id, idempotency_key, spec_hash)
        if existing is None:
            raise
        return existing, False
    _publish(publish, job.id)
    return job, True


def cancel_job(db: Database, tenant_id: str, job_id: str) -> Job:
    """Cancel a queued job at once, or flag a running one (its loop saves and stops).

    Raises NotFound for another tenant's job and Conflict for a finished one.
    """
    with db.transaction() as session:
        job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id).with_for_update())
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} already ended ({job.status}); only queued or running jobs can be cancelled")
        if job.status == "queued":
            job.status, job.finished_at = "cancelled", utcnow()
            _event(session, job.id, job.attempt, "cancelled", "cancelled before it started")
        elif not job.cancel_requested:
            job.cancel_requested = True
            _event(session, job.id, job.attempt, "cancel_requested", "cancel requested; the job stops after this step")
        return job


# --------------------------------------------------------------------- worker side


def claim(db: Database, job_id: str, worker: str, lease_seconds: float) -> Claim | None:
    """Take a queued job: bump `attempt`, set the lease. None if it is not claimable
    (already running elsewhere, finished, cancelled, or unknown)."""
    now = utcnow()
    with db.transaction() as session:
        row = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
            .values(
                status="running",
                attempt=Job.attempt + 1,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                worker=worker[:255],
                started_at=func.coalesce(Job.started_at, now),
                rate_since=None,
                rate_since_step=None,
            )
            .returning(Job.attempt, Job.spec)
        ).first()
        if row is None:
            return None
        attempt, spec = row
        latest = session.execute(
            select(Checkpoint.step, Checkpoint.path)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.step.desc())
            .limit(1)
        ).first()
        resume_step, resume_path = latest if latest else (0, None)
        # Steps after the checkpoint are recomputed; drop what a dead attempt left of them
        # so the curve never shows points the resumed model did not produce.
        session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > resume_step))
        session.execute(update(Job).where(Job.id == job_id).values(current_step=resume_step))
        where = f"resuming from step {resume_step}" if resume_path else "from the start"
        _event(session, job_id, attempt, "started", f"attempt {attempt} on {worker}, {where}")
    return Claim(job_id, attempt, spec, lease_seconds, resume_step, resume_path)


def claim_next(db: Database, worker: str, lease_seconds: float, max_running: int = 0, tries: int = 5) -> Claim | None:
    """Take the next job by fair dispatch (issue 13, item 8), whatever message woke the worker.

    The broker message only wakes a worker; the rows decide. The next job is the oldest
    queued one of the tenant with the fewest running jobs, ties going to the tenant served
    least recently (then to the oldest waiting job), so a tenant's flood of jobs alternates with everyone else's instead of
    going first. Tenants at `max_running` running jobs wait (0: no limit). Cancelled jobs
    are never candidates, so a cancelled job's stale message wakes the worker for the next
    real job, or costs one query. None when nothing is claimable.
    """
    for _ in range(tries):  # another worker may win the chosen job: choose again
        job_id = next_job_id(db, max_running)
        if job_id is None:
            return None
        held = claim(db, job_id, worker, lease_seconds)
        if held is not None:
            return held
    return None


def fence(session: Session, held: Claim, **values: object) -> bool:
    """Inside a worker's transaction: renew the lease (and set `values`) only if this
    attempt still owns the running job; returns the cancel flag, raises Fenced otherwise.

    The UPDATE locks the job row until commit, so the writes that follow in the same
    transaction cannot interleave with a reaper or a newer claim.
    """
    lease = utcnow() + timedelta(seconds=held.lease_seconds)
    cancel = session.execute(
        update(Job)
        .where(Job.id == held.job_id, Job.attempt == held.attempt, Job.status == "running")
        .values(**{"lease_expires_at": lease, **values})
        .returning(Job.cancel_requested)
    ).scalar()
    if cancel is None:
        raise Fenced(f"job {held.job_id} attempt {held.attempt} was superseded")
    return bool(cancel)


def heartbeat(db: Database, held: Claim) -> bool:
    """Renew the lease; returns the cancel flag. Raises Fenced if the job was taken away."""
    with db.transaction() as session:
        return fence(session, held)


def record_checkpoint(db: Database, held: Claim, step: int, path: str) -> None:
    """Record a checkpoint folder (path relative to the artifacts folder) for this attempt."""
    with db.transaction() as session:
        fence(session, held)
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == held.job_id, Checkpoint.step == step))
        session.add(Checkpoint(job_id=held.job_id, step=step, path=path, attempt=held.attempt))
        _event(session, held.job_id, held.attempt, "checkpoint", f"checkpoint at step {step}", {"step": step})


def finish(db: Database, held: Claim, cancelled: bool) -> None:
    """End the job: `cancelled` if it stopped on the cancel flag, else `succeeded`."""
    status = "cancelled" if cancelled else "succeeded"
    with db.transaction() as session:
        fence(session, held, status=status, finished_at=utcnow(), lease_expires_at=None)
        _event(session, held.job_id, held.attempt, status, f"job {status}")
        wake_tenant_queue(session, held.job_id)


def fail(db: Database, held: Claim, code: str, message: str) -> None:
    """End the job as failed with a machine-readable code and a human message."""
    with db.transaction() as session:
        fence(session, held, status="failed", finished_at=utcnow(), lease_expires_at=None,
              error_code=code, error_message=message[:4000])
        _event(session, held.job_id, held.attempt, "failed", f"{code}: {message}"[:4000])
        wake_tenant_queue(session, held.job_id)


def release(db: Database, held: Claim, reason: str, fails_as: str | None = None) -> str:
    """Give a running job back to the queue; returns "released", or "failed" (see below).

    Without `fails_as` it is a graceful hand-back (the worker is shutting down after a
    checkpoint) and costs no attempt. With it, the attempt failed for a reason another
    worker or try may not have (this worker declined the job's resources, a rank died): it
    counts towards max_attempts like a lost worker, and once they are used the job fails
    with error code `fails_as` and `reason`, instead of cycling through the queue forever.

    No message is sent from here: a worker that is shutting down may still take one. The
    next reaper pass, in any live process, publishes it (queued_at NULL)."""
    with db.transaction() as session:
        if fails_as is not None:
            limit = session.scalar(select(Job.max_attempts).where(Job.id == held.job_id)) or 1
            used = held.attempt - _graceful_releases(session, held.job_id)
            if used >= limit:
                message = f"{reason} (attempt {held.attempt}: {used} failed attempts of max_attempts={limit}); giving up"
                fence(session, held, status="failed", finished_at=utcnow(), lease_expires_at=None,
                      error_code=fails_as, error_message=message[:4000])
                _event(session, held.job_id, held.attempt, "failed", f"{fails_as}: {message}"[:4000])
                wake_tenant_queue(session, held.job_id)
                return "failed"
        fence(session, held, status="queued", queued_at=None, lease_expires_at=None, worker=None)
        _event(session, held.job_id, held.attempt, "released", reason, {"counted": True} if fails_as else None)
    return "released"


def _graceful_releases(session: Session, job_id: str) -> int:
    """Hand-backs that cost no attempt: `release` events not marked as counted."""
    data = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "released")).all()
    return sum(1 for d in data if not (d or {}).get("counted"))


def decline(db: Database, job_id: str) -> None:
    """A worker took a job's message but will not run it (it is shutting down): have the
    next reaper pass publish the job again."""
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(queued_at=None))


def note(db: Database, held: Claim, kind: str, message: str, data: dict | None = None) -> None:
    """Record an event of this attempt (e.g. a checkpoint it could not use), fenced.
    Issue 6, case 9: the user sees why more steps than usual were recomputed."""
    with db.transaction() as session:
        fence(session, held)
        _event(session, held.job_id, held.attempt, kind, message, data)


# ---------------------------------------------------------------------------- reaper


def reap(db: Database, publish: Publish, requeue_unclaimed_seconds: float) -> dict[str, int]:
    """One reaper pass. Jobs whose lease expired are re-queued (or failed once they used
    `max_attempts`, or cancelled if a cancel was pending); jobs queued for longer than
    `requeue_unclaimed_seconds` are republished in case their message was lost, and
    released or declined jobs (queued_at NULL) are published.
    Returns counts per outcome."""
    now = utcnow()
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "republished": 0}
    with db.transaction() as session:
        expired = session.execute(
            select(Job.id, Job.attempt, Job.max_attempts, Job.cancel_requested)
            .where(Job.status == "running", Job.lease_expires_at < now)
        ).all()
        stale = session.scalars(select(Job.id).where(Job.status == "queued", _unpublished(now, requeue_unclaimed_seconds))).all()
    for job_id, attempt, max_attempts, cancel in expired:
        outcome = _reap_expired(db, job_id, attempt, max_attempts, cancel, now)
        if outcome:
            counts[outcome] += 1
            if outcome == "requeued":
                _publish(publish, job_id)
    for job_id in stale:
        with db.transaction() as session:
            won = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued", _unpublished(now, requeue_unclaimed_seconds))
                .values(queued_at=now)
            ).rowcount
        if won:
            counts["republished"] += 1
            _publish(publish, job_id)
    return counts


def _unpublished(now: datetime, requeue_unclaimed_seconds: float):
    """Queued jobs whose message may be lost (old) or was never sent (NULL)."""
    return Job.queued_at.is_(None) | (Job.queued_at < now - timedelta(seconds=requeue_unclaimed_seconds))


def _reap_expired(db: Database, job_id: str, attempt: int, max_attempts: int, cancel: bool, now: datetime) -> str | None:
    # A graceful hand-back (`release`, worker shutting down after a checkpoint) bumps
    # `attempt` too, but is not a failure (issue 6, case 2): only lost (and counted
    # released) attempts count towards max_attempts.
    with db.transaction() as session:
        released = _graceful_releases(session, job_id)
    lost = attempt - released
    if cancel:
        outcome, values, message = "cancelled", {"status": "cancelled", "finished_at": now}, "worker lost while cancelling"
    elif lost >= max_attempts:
        message = f"worker lost (lease expired) on attempt {attempt} of {max_attempts}; giving up"
        if released:
            message = (f"worker lost (lease expired) on attempt {attempt}: {lost} lost attempts of max_attempts="
                       f"{max_attempts} ({released} graceful hand-backs not counted); giving up")
        outcome = "failed"
        values = {"status": "failed", "finished_at": now, "error_code": "lease_expired", "error_message": message}
    else:
        outcome, values = "requeued", {"status": "queued", "queued_at": now}
        message = f"worker lost (lease expired) on attempt {attempt}; re-queued"
    with db.transaction() as session:
        won = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running", Job.lease_expires_at < now)
            .values(lease_expires_at=None, worker=None, **values)
        ).rowcount
        if won:
            _event(session, job_id, attempt, outcome, message)
            if outcome != "requeued":
                wake_tenant_queue(session, job_id)
    return outcome if won else None


# ----------------------------------------------------------------------------- helpers


def _job_for_key(session: Session, tenant_id: str, key: str | None, spec_hash: str) -> Job | None:
    if key is None:
        return None
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.spec_hash != spec_hash:
        raise InvalidInput(
            f"Idempotency-Key {key!r} was already used for job {job.id} with a different spec; "
            "use a new key for a new job, or resend the identical spec to get that job back"
        )
    return job


def _check_files(session: Session, tenant_id: str, spec: JobSpec) -> None:
    """Every `file:<id>` dataset must be one of this tenant's dataset uploads, every python
    grader's file one of its grader uploads."""
    d = spec.datasets
    sources = {"datasets.sft": d.sft, "datasets.rl": d.rl, "datasets.validation": d.validation}
    sources.update({f"datasets.eval.{i}": source for i, source in enumerate(d.eval)})
    wanted = {f"{where}.source": ("dataset", s.source) for where, s in sources.items() if s.source.startswith("file:")}
    wanted.update({f"reward.{i}.file": ("grader", g.file) for i, g in enumerate(spec.reward) if g.kind == "python"})
    if not wanted:
        return
    ids = [ref.removeprefix("file:") for _, ref in wanted.values()]
    owned = dict(session.execute(select(File.id, File.purpose).where(File.tenant_id == tenant_id, File.id.in_(ids))).all())
    problems = []
    for where, (purpose, ref) in wanted.items():
        file_id = ref.removeprefix("file:")
        if file_id not in owned:
            problems.append(f"{where}: {ref} is not one of your uploaded files (upload it with POST /files)")
        elif (owned[file_id] or "dataset") != purpose:
            problems.append(f"{where}: {ref} was uploaded as a {owned[file_id]}, not a {purpose} (POST /files?purpose={purpose})")
    if problems:
        raise InvalidInput("; ".join(problems), problems)


def _check_judges(session: Session, tenant_id: str, spec: JobSpec) -> None:
    """A model grader's served judge `<job_id>[:<step>]` must be one of this tenant's jobs
    (its checkpoint may come later: it is resolved when the grader runs)."""
    wanted = {f"reward.{i}.model": g.served_model.partition(":")[0] for i, g in enumerate(spec.reward)
              if g.kind == "model" and g.url is None and not g.model.startswith("base:")}
    if not wanted:
        return
    owned = set(session.scalars(select(Job.id).where(Job.tenant_id == tenant_id, Job.id.in_(set(wanted.values())))))
    problems = [f"{where}: no job {job_id} of yours to judge with (use an id from GET /jobs)"
                for where, job_id in wanted.items() if job_id not in owned]
    if problems:
        raise InvalidInput("; ".join(problems), problems)


def _event(session: Session, job_id: str, attempt: int, kind: str, message: str, data: dict | None = None) -> None:
    session.add(JobEvent(job_id=job_id, attempt=attempt, kind=kind, message=message, data=data))
    webhooks.enqueue(session, job_id, kind, data)  # issue 17: the outbox row commits with the change


def _publish(publish: Publish, job_id: str) -> None:
    # The row is committed already; if the broker is down the reaper republishes later.
    try:
        publish(job_id)
    except Exception:  # noqa: BLE001 - any broker failure is recoverable the same way
        log.warning("could not publish job %s; the reaper will retry", job_id, exc_info=True)


def job_dir(artifacts_dir: Path, job_id: str) -> Path:
    """Where a job's checkpoints live."""
    return artifacts_dir / "jobs" / job_id
