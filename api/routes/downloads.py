"""Checkpoint downloads (issue 17): a tar of the Hugging Face folder, with HTTP Range."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from api.deps import principal
from service import downloads
from service.auth import Principal

router = APIRouter(tags=["jobs"])
TAR = "application/x-tar"


@router.get(
    "/jobs/{job_id}/checkpoints/{step}/download",
    responses={200: {"content": {TAR: {}}}, 206: {"content": {TAR: {}}}, 416: {}},
)
async def download_checkpoint(
    job_id: str,
    step: int,
    request: Request,
    who: Principal = Depends(principal),
    format: str | None = Query(None, pattern="^(full|adapter|merged)$",
                               description="LoRA jobs: adapter (default) or merged (peft merge_and_unload)."),
    range_header: str | None = Header(None, alias="range", description="bytes=START-END to resume a download."),
    if_range: str | None = Header(None, description="Serve the range only if the ETag still matches."),
):
    """The checkpoint as an uncompressed tar (config, tokenizer, safetensors; no optimizer
    state). Resumable: send `Range: bytes=N-` (and `If-Range: <ETag>`) to continue."""
    settings, db = request.app.state.settings, request.app.state.db
    if format == "merged":
        await run_in_threadpool(request.app.state.merges.ensure, who.tenant_id, job_id, step)
    archive = await run_in_threadpool(
        downloads.checkpoint_archive, db, settings.resolved_artifacts_dir, who.tenant_id, job_id, step, format
    )
    headers = {"Accept-Ranges": "bytes", "ETag": archive.etag,
               "Content-Disposition": f'attachment; filename="{archive.filename}"'}
    use_range = range_header if if_range in (None, archive.etag) else None
    try:
        span = downloads.parse_range(use_range, archive.size)
    except downloads.RangeNotSatisfiable as error:
        return JSONResponse({"detail": error.message, "problems": [error.message]}, status_code=416,
                            headers={"Content-Range": f"bytes */{archive.size}"})
    start, end = span or (0, archive.size - 1)
    headers["Content-Length"] = str(end - start + 1)
    status = 200
    if span is not None:
        status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{archive.size}"
    body = iterate_in_threadpool(archive.iter_bytes(start, end))  # disk reads off the event loop
    return StreamingResponse(body, status_code=status, media_type=TAR, headers=headers)


@router.get("/jobs/{job_id}/artifacts/tensorboard", responses={200: {"content": {TAR: {}}}})
async def download_tensorboard(job_id: str, request: Request, who: Principal = Depends(principal)):
    """The job's TensorBoard event files as a tar (`tensorboard --logdir` the extracted folder)."""
    settings, db = request.app.state.settings, request.app.state.db
    archive = await run_in_threadpool(downloads.tensorboard_archive, db, settings.resolved_artifacts_dir,
                                      who.tenant_id, job_id)
    headers = {"Content-Length": str(archive.size),
               "Content-Disposition": f'attachment; filename="{archive.filename}"'}
    return StreamingResponse(iterate_in_threadpool(archive.iter_bytes()), media_type=TAR, headers=headers)
