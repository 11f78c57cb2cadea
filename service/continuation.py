"""Continue from a job (issue 17): a spec's `model: job:<id>[:<step>]` starts a new job
from that checkpoint's weights (with a fresh optimizer), within the same tenant only.

Checked when the job is created (another tenant's job, or a step that has no checkpoint,
answers 404 like any other missing resource); resolved to a folder when the worker loads
the model. `job:<id>` without a step means the parent's newest checkpoint at load time.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import Database
from service.errors import NotFound
from service.models import Checkpoint, Job

PREFIX = "job:"


def parse(source: str) -> tuple[str, int | None]:
    """`job:<id>[:<step>]` -> (job id, step or None)."""
    job_id, _, step = source.removeprefix(PREFIX).partition(":")
    return job_id, int(step) if step else None


def check_parent(session: Session, tenant_id: str, source: str) -> None:
    """Raise NotFound unless `source` names a checkpoint of one of this tenant's jobs."""
    if not source.startswith(PREFIX):
        return
    job_id, step = parse(source)
    if session.scalar(select(Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id)) is None:
        raise NotFound(f"model: no job {job_id} (continue only from your own jobs)")
    steps = sorted(session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)))
    if not steps:
        raise NotFound(f"model: job {job_id} has no checkpoint yet; wait for its first one (save_every)")
    if step is not None and step not in steps:
        raise NotFound(f"model: job {job_id} has no checkpoint at step {step}; it has steps {steps}")


def checkpoint_path(db: Database, source: str) -> str:
    """The checkpoint folder (relative to the artifacts folder) a `job:` source names."""
    job_id, step = parse(source)
    with db.read() as session:
        query = select(Checkpoint.path).where(Checkpoint.job_id == job_id)
        query = query.where(Checkpoint.step == step) if step is not None else query.order_by(Checkpoint.step.desc())
        path = session.scalars(query.limit(1)).first()
    if path is None:
        raise NotFound(f"{source}: that checkpoint no longer exists")
    return path
