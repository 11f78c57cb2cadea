"""Dataset uploads: JSONL as the raw request body, validated line by line."""

from __future__ import annotations

import re
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import principal
from service.auth import Principal
from service.errors import InvalidInput, TooLarge
from service.files import Upload, list_files

router = APIRouter(tags=["files"])
# A display label only (stored files are named by id), but "." and ".." are refused too (issue 6, case 15).
FILENAME = re.compile(r"^(?!\.+$)[\w.\- ]{1,255}$")


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
    settings = request.app.state.settings
    _check_request(request, filename, settings.max_upload_bytes)
    upload = Upload(settings.resolved_artifacts_dir, settings.max_upload_bytes, purpose)
    try:
        async for chunk in request.stream():  # the cap is enforced as bytes arrive
            upload.write(chunk)
    except BaseException:
        upload.discard()
        raise
    return await run_in_threadpool(upload.commit, request.app.state.db, who.tenant_id, filename)


@router.get("/files")
def get_files(request: Request, who: Principal = Depends(principal)) -> dict:
    """Your uploaded datasets, newest first."""
    return {"files": list_files(request.app.state.db, who.tenant_id)}


def _check_request(request: Request, filename: str, max_bytes: int) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise TooLarge(f"upload of {length} bytes exceeds this deployment's limit of {max_bytes} bytes; split the file")
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise InvalidInput(
            "send the JSONL file as the raw request body, not a multipart form: "
            "curl --data-binary @train.jsonl -H 'Content-Type: application/jsonl' '<url>/files?filename=train.jsonl'"
        )
    if not FILENAME.match(filename):
        raise InvalidInput("filename: use 1-255 letters, digits, spaces, '.', '_' or '-' (not only dots)")
