"""Read side of jobs for the API: one job with progress and ETA, pages of jobs, events,
checkpoints, and the change feed behind the Server-Sent Events stream.

Everything is scoped by tenant: another tenant's job is indistinguishable from none.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, cast, select, tuple_
from sqlalchemy.orm import Session

from service.db import Database
from service.errors import InvalidInput, NotFound
from service.models import TERMINAL, Checkpoint, Job, JobEvent, MetricPoint, utcnow

MAX_PAGE = 200
SUMMARY_COLUMNS = (
    Job.id, Job.status, Job.spec["method"].as_string().label("method"), Job.spec["model"].as_string().label("model"),
    Job.attempt, Job.cancel_requested, Job.current_step, Job.total_steps, Job.rate_since, Job.rate_since_step,
    Job.mu, Job.reward_mean, Job.error_code, Job.error_message, Job.created_at, Job.started_at, Job.finished_at,
)


def get_job(db: Database, tenant_id: str, job_id: str) -> dict:
    """The job as the API shows it: status, progress, ETA, latest mu/reward, error."""
    with db.read() as session:
        return job_view(_own_job(session, tenant_id, job_id))


def list_jobs(db: Database, tenant_id: str, cursor: str | None = None, limit: int = 50, status: str | None = None) -> dict:
    """Summaries (no spec), newest first. `next_cursor` (opaque) fetches the following
    page; null at the end."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: must be between 1 and {MAX_PAGE}")
    # Summaries only (issue 13, item 11): the spec (up to max_spec_bytes each) is read by
    # GET /jobs/{id}; the list reads its method and model out of it in the database.
    query = select(*SUMMARY_COLUMNS).where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor:
        created_at, job_id = _decode_cursor(cursor)
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created_at, job_id))
    with db.read() as session:
        jobs = session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    page = jobs[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(jobs) > limit else None
    return {"jobs": [job_summary(job, job.method, job.model) for job in page], "next_cursor": next_cursor}


def list_events(db: Database, tenant_id: str, job_id: str, after_id: int = 0, limit: int = 100) -> list[dict]:
    """The job's events (created, started, checkpoint, cancel_requested, ...) in order."""
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit: must be between 1 and 1000")
    with db.read() as session:
        _own_job(session, tenant_id, job_id)
        return _events(session, job_id, after_id, limit)


def list_checkpoints(db: Database, tenant_id: str, job_id: str) -> list[dict]:
    """Recorded checkpoints, by step; `path` is relative to the artifacts folder."""
    with db.read() as session:
        _own_job(session, tenant_id, job_id)
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
    return [{"step": c.step, "path": c.path, "attempt": c.attempt, "created_at": c.created_at} for c in rows]


@dataclass
class Changes:
    """What happened since a (step, event id) cursor: the SSE stream's unit of work."""

    points: list[tuple[int, str]]  # (step, the point as JSON text)
    events: list[dict]
    status: str

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def changes_since(db: Database, tenant_id: str, job_id: str, after_step: int, after_event: int, limit: int = 500) -> Changes:
    """Metric points after `after_step` and events after `after_event`, plus the status."""
    with db.read() as session:
        job = _own_job(session, tenant_id, job_id)
        points = session.execute(
            select(MetricPoint.step, cast(MetricPoint.values, Text))
            .where(MetricPoint.job_id == job_id, MetricPoint.step > after_step)
            .order_by(MetricPoint.step)
            .limit(limit)
        ).all()
        events = _events(session, job_id, after_event, limit)
        return Changes([(step, text) for step, text in points], events, job.status)


def job_view(job: Job) -> dict:
    """A job row as the API's JSON object: its summary and its spec."""
    return {**job_summary(job, job.spec.get("method"), job.spec.get("model")), "spec": job.spec}


def job_summary(job, method: str | None, model: str | None) -> dict:
    """What a list shows of a job (a Job, or a row of SUMMARY_COLUMNS): all but the spec."""
    return {
        "id": job.id,
        "status": job.status,
        "method": method,
        "model": model,
        "attempt": job.attempt,
        "cancel_requested": job.cancel_requested,
        "progress": {
            "step": job.current_step,
            "total_steps": job.total_steps,
            "fraction": round(job.current_step / job.total_steps, 4) if job.total_steps else 0.0,
        },
        "eta_seconds": _eta_seconds(job),
        "latest": {"mu": job.mu, "reward_mean": job.reward_mean},
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _eta_seconds(job) -> float | None:
    # Wall-clock rate of this attempt since its first step: includes checkpoints and evals,
    # excludes model loading. None until two steps of this attempt have been seen.
    if job.status != "running" or job.rate_since is None or job.rate_since_step is None:
        return 0.0 if job.status == "succeeded" else None
    done = job.current_step - job.rate_since_step
    if done <= 0:
        return None
    per_step = (utcnow() - job.rate_since).total_seconds() / done
    return round(per_step * (job.total_steps - job.current_step), 1)


def _own_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def _events(session: Session, job_id: str, after_id: int, limit: int) -> list[dict]:
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
    ).all()
    return [
        {"id": e.id, "kind": e.kind, "message": e.message, "attempt": e.attempt, "data": e.data, "created_at": e.created_at}
        for e in rows
    ]


def cursor_after(db: Database, tenant_id: str, job_id: str) -> str:
    """The list cursor whose page starts just after job `job_id` (OpenAI's `after`);
    NotFound for an unknown or another tenant's job."""
    with db.read() as session:
        job = session.execute(select(Job.created_at, Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id)).first()
    if job is None:
        raise NotFound(f"no job {job_id}")
    return _encode_cursor(job)


def _encode_cursor(job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), job_id
    except ValueError as error:
        raise InvalidInput("cursor: not a cursor from a previous page's next_cursor; omit it to start over") from error
