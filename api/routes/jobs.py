"""Job routes (DESIGN §6). Each validates, makes one service call, and returns."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import bearer_key, principal
from api.sse import job_stream, wants_stream
from service import jobs, lifecycle, metrics
from service.auth import Principal, authenticate
from service.jobs import job_view
from service.models import JOB_STATUSES
from service.specs import JobSpec

router = APIRouter(tags=["jobs"])
MAX_STEP = 2**31 - 1  # metric_points.step is a 32-bit integer
MAX_EVENT_ID = 2**63 - 1  # job_events.id is a 64-bit integer
SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}}}  # one Server-Sent Event


@router.post("/jobs", status_code=201)
def create_job(
    spec: JobSpec,
    request: Request,
    response: Response,
    who: Principal = Depends(principal),
    idempotency_key: str | None = Header(None, description="Retry-safe creation: same key + same spec = same job."),
) -> dict:
    """Queue a training job. The body is the job spec (unknown fields are rejected)."""
    state = request.app.state
    settings = state.settings
    job, created = lifecycle.create_job(
        state.db, who.tenant_id, spec, idempotency_key, state.publish, settings.max_attempts,
        max_queued=settings.max_queued_jobs_per_tenant, max_spec_bytes=settings.max_spec_bytes,
        artifacts_dir=settings.resolved_artifacts_dir,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_view(job)


@router.get("/jobs")
def list_jobs(
    request: Request,
    who: Principal = Depends(principal),
    cursor: str | None = Query(None, description="next_cursor of the previous page."),
    limit: int = Query(50, ge=1, le=200),
    status: str | None = Query(None, pattern="^(" + "|".join(JOB_STATUSES) + ")$"),
) -> dict:
    """Your jobs, newest first, a page at a time: summaries; the spec is on GET /jobs/{id}."""
    return jobs.list_jobs(request.app.state.db, who.tenant_id, cursor, limit, status)


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """Status, progress, ETA, latest mu and reward, error."""
    return jobs.get_job(request.app.state.db, who.tenant_id, job_id)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """Cancel: a queued job ends at once; a running one checkpoints and ends `cancelled`."""
    return job_view(lifecycle.cancel_job(request.app.state.db, who.tenant_id, job_id))


@router.get("/jobs/{job_id}/metrics")
async def get_metrics(
    job_id: str,
    request: Request,
    names: str | None = Query(None, description="Comma-separated metric names, e.g. mu,reward_mean."),
    # Bounded to the database's integer range: a larger value was a 500 (issue 6, case 22).
    after_step: int = Query(0, le=MAX_STEP, description="Only steps after this one (pass next_after_step to poll)."),
    limit: int = Query(1000, description=f"At most this many steps (1..{metrics.MAX_LIMIT})."),
) -> Response:
    """Per-step metrics in step order, one object per step. Needs `Authorization: Bearer <key>`.

    The hot path dashboards poll: the key check and the page are one database statement."""
    key, db = bearer_key(request), request.app.state.db
    wanted = names.split(",") if names else None
    page = await run_in_threadpool(metrics.points_json, db, key, job_id, wanted, after_step, limit)
    return Response(page, media_type="application/json")


@router.get(
    "/jobs/{job_id}/events",  # a stream with Accept: text/event-stream (documented for issue 6, case 22)
    responses={200: {"content": {"application/json": {}, "text/event-stream": {"schema": SSE_EVENT}}}},
)
def get_events(
    job_id: str,
    request: Request,
    who: Principal = Depends(principal),
    after_id: int = Query(0, ge=0, le=MAX_EVENT_ID),
    limit: int = Query(100, ge=1, le=1000),
    last_event_id: str | None = Header(None),
):
    """The job's events. With `Accept: text/event-stream`: a live stream of new events and
    metric points that resumes after `Last-Event-ID`."""
    db = request.app.state.db
    if wants_stream(request):
        jobs.get_job(db, who.tenant_id, job_id)  # 404 now, not inside the stream
        key_check = partial(authenticate, db, bearer_key(request))  # re-run while the stream is open
        recheck = request.app.state.settings.sse_key_recheck_seconds
        return job_stream(request.app.state.feeds, who.tenant_id, job_id, last_event_id, key_check, recheck)
    return {"events": jobs.list_events(db, who.tenant_id, job_id, after_id, limit)}


@router.get("/jobs/{job_id}/checkpoints")
def get_checkpoints(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict:
    """Recorded checkpoints by step (usable as `<job_id>:<step>` for generation)."""
    return {"checkpoints": jobs.list_checkpoints(request.app.state.db, who.tenant_id, job_id)}
