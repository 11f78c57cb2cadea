"""OpenAI fine-tuning front door (issue 17): /v1/files and /v1/fine_tuning/jobs for the
unmodified `openai` client. Errors use OpenAI's shape (kept local to this module)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import principal
from service import openai_finetune as ft
from service.auth import Principal

OPENAI_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}}},
    "description": "OpenAI's error shape."}
router = APIRouter(prefix="/v1", tags=["openai fine-tuning"], responses={400: OPENAI_ERROR, 404: OPENAI_ERROR})


async def _call(function, *args) -> JSONResponse:
    try:
        return JSONResponse(await run_in_threadpool(function, *args), status_code=200)
    except ft.OpenAIError as error:
        return JSONResponse(error.body(), status_code=error.status)


@router.post("/files")
async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...),
                      who: Principal = Depends(principal)) -> JSONResponse:
    """Upload a fine-tuning JSONL file (OpenAI chat format or ours)."""
    s = request.app.state.settings
    content = await file.read(s.max_upload_bytes + 1)
    return await _call(ft.upload_file, request.app.state.db, s.resolved_artifacts_dir, s.max_upload_bytes,
                       who.tenant_id, file.filename or "upload.jsonl", purpose, content)


@router.post("/fine_tuning/jobs")
async def create_fine_tuning_job(request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    """Create a job: method supervised -> sft, reinforcement -> grpo; extra_body {"amft": {...}}."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse(ft.OpenAIError(400, "the body must be a JSON object").body(), status_code=400)
    state = request.app.state
    return await _call(ft.create_job, state.db, who.tenant_id, body, state.publish, state.settings.max_attempts)


@router.get("/fine_tuning/jobs")
async def list_fine_tuning_jobs(request: Request, limit: int = Query(20, ge=1, le=200),
                                after: str | None = Query(None, max_length=64, description="Last job id of the previous page."),
                                who: Principal = Depends(principal)) -> JSONResponse:
    return await _call(ft.list_jobs, request.app.state.db, who.tenant_id, limit, after)


@router.get("/fine_tuning/jobs/{job_id}")
async def retrieve_fine_tuning_job(job_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    return await _call(ft.retrieve, request.app.state.db, who.tenant_id, job_id)


@router.post("/fine_tuning/jobs/{job_id}/cancel")
async def cancel_fine_tuning_job(job_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    return await _call(ft.cancel, request.app.state.db, who.tenant_id, job_id)


@router.get("/fine_tuning/jobs/{job_id}/events")
async def list_fine_tuning_events(job_id: str, request: Request, limit: int = Query(20, ge=1, le=1000),
                                  who: Principal = Depends(principal)) -> JSONResponse:
    return await _call(ft.events, request.app.state.db, who.tenant_id, job_id, limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
async def list_fine_tuning_checkpoints(job_id: str, request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    return await _call(ft.checkpoints, request.app.state.db, who.tenant_id, job_id)
