"""Checkpoint retention (issue 17): after each checkpoint, forget the ones the job's
`retention` spec does not keep, so a long run does not fill the disk with weights.

Kept, always: the newest checkpoint (the one a resume claims), the one just written, and
any checkpoint a queued or running job of the same tenant continues from (`job:<id>:<step>`
or `job:<id>`, which means the newest). Kept by the spec: the newest `keep_last_n`, and the
best by `keep_best.metric` among checkpoints whose step recorded that metric.

Rows go first, in one fenced transaction; the caller deletes the folders after the commit.
A crash between the two leaves an orphan folder, never a row pointing at nothing kept.
"""

from __future__ import annotations

import math

from sqlalchemy import delete, select

from service.db import Database
from service.lifecycle import Claim, _event, fence
from service.models import TERMINAL, Checkpoint, Job, MetricPoint
from service.specs import RetentionSpec


def prune(db: Database, held: Claim) -> list[str]:
    """Apply the job's retention spec; returns the checkpoint paths (relative to the
    artifacts folder) whose rows were deleted and whose folders the caller must remove."""
    raw = held.spec.get("retention")
    if not raw:
        return []
    retention = RetentionSpec.model_validate(raw)
    with db.transaction() as session:
        fence(session, held)
        rows = dict(session.execute(select(Checkpoint.step, Checkpoint.path).where(Checkpoint.job_id == held.job_id)).all())
        keep = set(sorted(rows)[-retention.keep_last_n:])
        if retention.keep_best is not None:
            keep |= _best(session, held.job_id, sorted(rows), retention.keep_best.metric, retention.keep_best.mode)
        keep |= _continued_from(session, held.job_id, max(rows, default=0))
        doomed = sorted(step for step in rows if step not in keep)
        if not doomed:
            return []
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == held.job_id, Checkpoint.step.in_(doomed)))
        _event(session, held.job_id, held.attempt, "checkpoints_deleted",
               f"retention deleted the weights of steps {doomed}", {"steps": doomed})
    return [rows[step] for step in doomed]


def _best(session, job_id: str, steps: list[int], metric: str, mode: str) -> set[int]:
    points = session.execute(
        select(MetricPoint.step, MetricPoint.values).where(MetricPoint.job_id == job_id, MetricPoint.step.in_(steps))
    ).all()
    scored = [(values[metric], step) for step, values in points
              if isinstance(values.get(metric), (int, float)) and math.isfinite(values[metric])]
    if not scored:
        return set()
    # Ties go to the later checkpoint (more training for the same score).
    best = max(scored) if mode == "max" else min(scored, key=lambda item: (item[0], -item[1]))
    return {best[1]}


def _continued_from(session, job_id: str, newest: int) -> set[int]:
    """Steps of this job that unfinished jobs of its tenant start from (`job:<id>[:<step>]`)."""
    tenant = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    specs = session.scalars(select(Job.spec).where(Job.tenant_id == tenant, Job.status.notin_(TERMINAL))).all()
    steps = set()
    for spec in specs:
        model = str(spec.get("model", ""))
        if model == f"job:{job_id}":
            steps.add(newest)
        elif model.startswith(f"job:{job_id}:"):
            steps.add(int(model.rsplit(":", 1)[1]))
    return steps
