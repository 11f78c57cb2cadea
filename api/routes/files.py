"""Uploads: JSONL datasets validated line by line, and python grader files (parsed, never run here)."""

from __future__ import annotations

import re
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import principal
from service.auth import Principal
from service.errors import InvalidInput, TooLarge
from service.files import delete_file, list_files, start_upload

router = APIRouter(tags=["files"])
# A display label only (stored files are named by id), but "." and ".." are refused too (issue 6, case 15).
FILENAME = re.compile(r"(?!\.+\Z)[\w.\- ]{1,255}")  # fullmatch: `$` passes "...\n" (issue 13, item 4)


@router.post("/files", status_code=201)
async def upload_file(
    request: Request,
    who: Principal = Depends(principal),
    filename: str = Query("upload.jsonl", description="A name to recognise the file by."),
    purpose: Literal["dataset", "grader"] = Query(
        "dataset", description="dataset: JSONL records; grader: a python file defining reward(completions, **columns)."
    ),
) -> dict:
    """Upload a JSONL dataset (one record per line) as the raw body, e.g.
    `curl --data-binary @train.jsonl -H 'Content-Type: application/jsonl' .../files?filename=train.jsonl`.
    Use the returned `source` (`file:<id>`) in a job spec: as a dataset, or with
    `purpose=grader` as a python grader's `file`."""
    settings, db = request.app.state.settings, request.app.state.db
    declared = _check_request(request, filename, settings.max_upload_bytes)
    upload = await run_in_threadpool(start_upload, db, who.tenant_id, settings.resolved_artifacts_dir,
                                     settings.max_upload_bytes, settings.max_upload_bytes_per_tenant, declared,
                                     purpose)
    try:
        async for chunk in request.stream():  # the cap is enforced as bytes arrive
            upload.write(chunk)
    except BaseException:
        upload.discard()
        raise
    return await run_in_threadpool(upload.commit, db, who.tenant_id, filename)


@router.get("/files")
def get_files(request: Request, who: Principal = Depends(principal)) -> dict:
    """Your uploaded datasets, newest first."""
    return {"files": list_files(request.app.state.db, who.tenant_id)}


@router.delete("/files/{file_id}", status_code=204)
def remove_file(file_id: str, request: Request, who: Principal = Depends(principal)) -> Response:
    """Delete one of your uploads (409 while a queued or running job or evaluation uses it)."""
    delete_file(request.app.state.db, request.app.state.settings.resolved_artifacts_dir, who.tenant_id, file_id)
    return Response(status_code=204)


def _check_request(request: Request, filename: str, max_bytes: int) -> int | None:
    """Refuse what can be refused from the headers; returns the declared length if any."""
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isascii() and length.isdigit() else None
    if declared is not None and declared > max_bytes:
        raise TooLarge(f"upload of {length} bytes exceeds this deployment's limit of {max_bytes} bytes "
                       "(AMFT_MAX_UPLOAD_BYTES); split the file")
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise InvalidInput(
            "send the JSONL file as the raw request body, not a multipart form: "
            "curl --data-binary @train.jsonl -H 'Content-Type: application/jsonl' '<url>/files?filename=train.jsonl'"
        )
    if not FILENAME.fullmatch(filename):
        raise InvalidInput("filename: use 1-255 letters, digits, spaces, '.', '_' or '-' (not only dots)")
    return declared
