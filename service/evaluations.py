"""Evaluations: score a checkpoint (or any model /generate accepts, e.g. `base:<model>`)
on a dataset with the job's graders (a base model: the default grader), keep accuracy
and every item's output.

    queued --(inference worker)--> running --> succeeded | failed

The API creates the row and queues the evaluation (after the commit); the inference worker
(workers.inference.evaluate) generates, scores with the job's graders (the list that scored
its training rollouts, workers/trainer/graders.py) and stores the items here. Everything is scoped by tenant: another tenant's ids answer 404.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, defer, mapped_column

from service.db import Database
from service.errors import InvalidInput, NotFound
from service.inference import SamplingFields, resolve_model
from service.models import Base, File, Job, UTCDateTime, utcnow
from service.redact import redact_paths
from service.settings import get_settings
from service.specs import DataSourceSpec

Publish = Callable[[str], None]


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_job_created", "job_id", "created_at"),
                      Index("ix_evaluations_tenant_created", "tenant_id", "created_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))  # None: a base model
    step: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(200))  # what was evaluated, as /generate names it
    status: Mapped[str] = mapped_column(String(16), default="queued")
    dataset: Mapped[dict] = mapped_column(JSON)
    sampling: Mapped[dict] = mapped_column(JSON)
    total: Mapped[int | None] = mapped_column(Integer)
    correct: Mapped[int | None] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(Float)
    items: Mapped[list | None] = mapped_column(JSON)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EvaluationRequest(BaseModel):
    """POST /jobs/{id}/evaluations."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    step: int | None = Field(None, ge=0, description="Checkpoint step; default the latest.")
    dataset: DataSourceSpec = Field(
        default_factory=lambda: DataSourceSpec(split="id"),
        description="builtin:arithmetic (train/validation/id/ood), gsm8k (test), svamp (test) or file:<id>.",
    )
    limit: int | None = Field(None, ge=1, description="Score the first N items (capped by AMFT_EVALUATION_MAX_ITEMS).")
    sampling: SamplingFields | None = Field(
        None, description="Default: greedy, max_tokens = the job's training.max_completion_tokens."
    )


class ModelEvaluationRequest(EvaluationRequest):
    """POST /evaluations: any model /generate accepts."""

    step: None = Field(None, description="Not used here: name the step in `model` (<job_id>:<step>).")
    model: str = Field(max_length=200, description="<job_id> | <job_id>:<step> | base:builtin:tiny | base:builtin:smollm2-135m.")


def create_evaluation(db: Database, tenant_id: str, job_id: str, request: EvaluationRequest, publish: Publish) -> dict:
    """Check the job, checkpoint, dataset and limits; store a queued evaluation; queue it."""
    ref = job_id if request.step is None else f"{job_id}:{request.step}"
    if not isinstance(job_id, str) or len(job_id) != 32:
        raise NotFound(f"no job {job_id}: use an id from GET /jobs")
    return _create(db, tenant_id, resolve_model(db, tenant_id, ref), request, publish)  # 404 / 409 with a message


def create_model_evaluation(db: Database, tenant_id: str, request: ModelEvaluationRequest, publish: Publish) -> dict:
    """POST /evaluations: like a job's evaluation, for any model reference. A base model is
    scored with the default grader (math-verify) and greedy decoding up to 128 tokens."""
    return _create(db, tenant_id, resolve_model(db, tenant_id, request.model), request, publish)


def _create(db: Database, tenant_id: str, model: dict, request: EvaluationRequest, publish: Publish) -> dict:
    limit = _limit(request)
    job_id = model.get("job_id")
    with db.transaction() as session:
        _check_file(session, tenant_id, request.dataset.source)
        spec = session.get(Job, job_id).spec if job_id else {}
        row = Evaluation(
            id=uuid.uuid4().hex, tenant_id=tenant_id, job_id=job_id, step=model.get("step"), model=model["name"],
            status="queued", dataset=request.dataset.model_copy(update={"limit": limit}).model_dump(mode="json"),
            sampling=_sampling(request, spec),
        )
        session.add(row)
    publish(row.id)
    return evaluation_view(row)


def list_evaluations(db: Database, tenant_id: str, job_id: str) -> list[dict]:
    """The job's evaluations, newest first, without their items."""
    with db.transaction() as session:
        if session.scalar(select(Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id)) is None:
            raise NotFound(f"no job {job_id}: use an id from GET /jobs")
        rows = session.scalars(
            select(Evaluation).where(Evaluation.job_id == job_id).order_by(Evaluation.created_at.desc())
            .options(defer(Evaluation.items))  # up to evaluation_max_items outputs each; not listed
        ).all()
        return [evaluation_view(row) for row in rows]


def list_tenant_evaluations(db: Database, tenant_id: str) -> list[dict]:
    """Every evaluation of the tenant (jobs' and base models'), newest first, without items."""
    with db.transaction() as session:
        rows = session.scalars(
            select(Evaluation).where(Evaluation.tenant_id == tenant_id).order_by(Evaluation.created_at.desc())
            .limit(500).options(defer(Evaluation.items))
        ).all()
        return [evaluation_view(row) for row in rows]


def get_evaluation(db: Database, tenant_id: str, job_id: str | None, evaluation_id: str) -> dict:
    """One evaluation with its per-item results (`job_id` None: any of the tenant's)."""
    query = select(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.tenant_id == tenant_id)
    with db.transaction() as session:
        row = session.scalar(query if job_id is None else query.where(Evaluation.job_id == job_id))
        if row is None:
            where = "GET /evaluations" if job_id is None else f"GET /jobs/{job_id}/evaluations"
            raise NotFound(f"no evaluation {evaluation_id}: see {where}")
        return evaluation_view(row, items=True)


def evaluation_view(row: Evaluation, items: bool = False) -> dict:
    view = {
        "id": row.id, "job_id": row.job_id, "step": row.step, "model": row.model,
        "status": row.status, "dataset": row.dataset, "sampling": row.sampling,
        "total": row.total, "correct": row.correct, "accuracy": row.accuracy,
        "progress": {"done": len(row.items or []), "total": row.total},
        "error": row.error_message, "created_at": row.created_at,
        "started_at": row.started_at, "finished_at": row.finished_at,
    }
    if items:
        view["items"] = row.items or []
    return view


# ------------------------------------------------------------------ worker side


def start_evaluation(db: Database, evaluation_id: str) -> dict | None:
    """Mark it running and return what the worker needs; None if it already ended."""
    with db.transaction() as session:
        result = session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status.in_(("queued", "running")))
            .values(status="running", started_at=utcnow())
        )
        if result.rowcount == 0:
            return None
        row = session.get(Evaluation, evaluation_id)
        if row.job_id is None:  # a base model: the default grader
            model, reward = {"kind": "base", "source": row.model.removeprefix("base:")}, None
        else:
            model = {"kind": "checkpoint", "job_id": row.job_id, "step": row.step}
            reward = (session.get(Job, row.job_id).spec or {}).get("reward")  # the job's graders score it
        return {"id": row.id, "job_id": row.job_id, "step": row.step, "model": model, "dataset": row.dataset,
                "sampling": row.sampling, "reward": reward, "tenant_id": row.tenant_id}


def record_progress(db: Database, evaluation_id: str, items: list[dict], total: int) -> None:
    """Store the items scored so far and the item count, so GET shows done / total."""
    with db.transaction() as session:
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == "running")
            .values(items=items, total=total)
        )


def finish_evaluation(db: Database, evaluation_id: str, items: list[dict]) -> None:
    """Store the scored items; accuracy = items marked correct / items."""
    correct = sum(1 for item in items if item["correct"])
    with db.transaction() as session:
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == "running")
            .values(status="succeeded", items=items, total=len(items), correct=correct,
                    accuracy=correct / len(items) if items else 0.0, finished_at=utcnow())
        )


def fail_evaluation(db: Database, evaluation_id: str, message: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status.in_(("queued", "running")))
            .values(status="failed", error_message=redact_paths(message, get_settings())[:2000], finished_at=utcnow())
        )


def _limit(request: EvaluationRequest) -> int:
    cap = get_settings().evaluation_max_items
    wanted = request.limit or request.dataset.limit or cap
    if wanted > cap:
        raise InvalidInput(f"limit: {wanted} items exceed this deployment's limit of {cap} per evaluation")
    return wanted


def _sampling(request: EvaluationRequest, spec: dict) -> dict:
    if request.sampling is None:
        default = spec.get("training", {}).get("max_completion_tokens", 128)
        max_tokens = min(default, get_settings().generate_max_tokens)
        return {"max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": None, "stop": []}
    if request.sampling.n != 1:
        raise InvalidInput("sampling.n: evaluations score one completion per item; use n = 1")
    return request.sampling.sampling()


def _check_file(session, tenant_id: str, source: str) -> None:
    if source.startswith("file:"):
        file_id = source.removeprefix("file:")
        if session.scalar(select(File.id).where(File.id == file_id, File.tenant_id == tenant_id)) is None:
            raise InvalidInput(f"dataset.source: file:{file_id} is not one of your uploaded files (POST /files)")
