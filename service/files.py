"""Uploaded files: streamed to disk under a size cap and the tenant's quota, validated,
then moved into place and recorded. A spec names one as `file:<id>`. A rejected or
interrupted upload leaves neither a file nor a row behind; a crashed process's partial
files are swept when the API starts. Two purposes:

- `dataset`: JSONL records, validated line by line (one line in memory at a time), stored
  as `<artifacts>/files/<id>.jsonl`;
- `grader`: a python file defining `reward(completions, **columns)` (TRL's signature),
  checked by parsing only (never executed here), stored as `<artifacts>/files/<id>.py` and
  run by workers in a sandbox (workers/trainer/sandbox.py).
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session

from service.db import Database
from service.errors import Conflict, InvalidInput, NotFound, TooLarge, TooManyRequests
from service.evaluations import Evaluation
from service.models import File, Job, Tenant
from service.records import RecordError, validate_jsonl

INCOMING = ".incoming"  # partial uploads, under artifacts/files
MAX_LINE_BYTES = 16 * 1024 * 1024  # one record's line; validation holds at most this much of the file


PURPOSES = ("dataset", "grader")
_SUFFIX = {"dataset": ".jsonl", "grader": ".py"}


def file_path(artifacts_dir: Path, file_id: str, purpose: str = "dataset") -> Path:
    """Where an accepted upload lives (the trainer reads `file:<id>` from here)."""
    return artifacts_dir / "files" / f"{file_id}{_SUFFIX[purpose]}"


def check_grader_source(data: bytes) -> None:
    """A grader upload must be UTF-8 python that defines a top-level `reward` function.

    Parsed with `ast` only: user code is never executed outside the sandbox.
    """
    try:
        tree = ast.parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput("grader: the file is not UTF-8 text") from None
    except SyntaxError as error:
        raise InvalidInput(f"grader: line {error.lineno}: syntax error: {error.msg}") from None
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if "reward" not in defined:
        raise InvalidInput("grader: define a top-level `def reward(completions: list[str], **columns) -> list[float]`")


class Upload:
    """One upload in progress: `write` chunks as they arrive, then `commit` or `discard`.

    Every way out but a successful commit removes the partial file (issue 13, item 9). The
    part file is flock()ed while its upload lives, so `sweep_incoming` at start can tell a
    dead process's leftover from another process's upload in progress.
    """

    def __init__(self, artifacts_dir: Path, max_bytes: int, quota: Quota | None = None,
                 purpose: str = "dataset"):
        self.artifacts_dir = artifacts_dir
        self.purpose = purpose
        self.max_bytes = max_bytes
        self.quota = quota
        self.size = 0
        self._sha = hashlib.sha256()
        incoming = artifacts_dir / "files" / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        self._part = incoming / f"{uuid.uuid4().hex}.part"
        self._out = self._part.open("wb")
        fcntl.flock(self._out, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises TooLarge or TooManyRequests (and discards) once the upload
        cap or the tenant's quota is passed."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise TooLarge(f"upload exceeds this deployment's limit of {self.max_bytes} bytes "
                           "(AMFT_MAX_UPLOAD_BYTES); split the file")
        if self.quota is not None and self.size > self.quota.left:
            self.discard()
            raise self.quota.exceeded(self.size)
        self._sha.update(chunk)
        self._out.write(chunk)

    def discard(self) -> None:
        """Drop the partial file (safe to call twice, and after a commit)."""
        self._out.close()
        self._part.unlink(missing_ok=True)

    def commit(self, db: Database, tenant_id: str, filename: str) -> dict:
        """Validate every line, then store the file and its row; returns the file's view.

        Raises InvalidInput listing the bad lines (with line numbers) if any record is wrong,
        TooManyRequests if the tenant's stored bytes would pass the quota. On any failure,
        nothing is left behind: neither the partial file, nor a file, nor a row.
        """
        target = None
        try:
            self._out.flush()
            records = self._validate(filename)
            row = File(id=uuid.uuid4().hex, tenant_id=tenant_id, filename=filename[:255], bytes=self.size,
                       records=records, sha256=self._sha.hexdigest(), purpose=self.purpose)
            with db.transaction() as session:
                if self.quota is not None:
                    self.quota.check(session, tenant_id, self.size)
                session.add(row)
                session.flush()
                target = file_path(self.artifacts_dir, row.id, self.purpose)
                os.replace(self._part, target)  # the row commits next; if it fails, the file goes
            return file_view(row)
        except BaseException:
            if target is not None:
                target.unlink(missing_ok=True)
            raise
        finally:
            self.discard()

    def _validate(self, filename: str) -> int:
        """Records in a dataset (0 for a grader); raises InvalidInput naming the file."""
        if self.purpose == "grader":
            try:
                check_grader_source(self._part.read_bytes())
            except InvalidInput as error:
                raise InvalidInput(f"{filename}: {error}") from error
            return 0
        try:
            with self._part.open("rb") as lines:
                return validate_jsonl(_bounded_lines(lines, MAX_LINE_BYTES))
        except RecordError as error:
            raise InvalidInput(f"{filename}: {error}", [f"{filename}: {p}" for p in error.problems]) from error


@dataclass
class Quota:
    """A tenant's allowance of stored upload bytes, read when the upload starts and checked
    again, under the tenant's row lock, when it commits."""

    limit: int
    left: int

    def exceeded(self, size: int) -> TooManyRequests:
        return TooManyRequests(
            f"upload: {size} bytes would pass your limit of {self.limit} bytes of stored files "
            f"(AMFT_MAX_UPLOAD_BYTES_PER_TENANT; {max(self.left, 0)} bytes left); "
            "delete files you no longer need (DELETE /files/{id})"
        )

    def check(self, session: Session, tenant_id: str, size: int) -> None:
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
        self.left = self.limit - _stored_bytes(session, tenant_id)
        if size > self.left:
            raise self.exceeded(size)


def start_upload(db: Database, tenant_id: str, artifacts_dir: Path, max_bytes: int, tenant_limit: int,
                 declared_bytes: int | None = None, purpose: str = "dataset") -> Upload:
    """Begin an upload for a tenant; raises TooManyRequests at once when the declared size
    (Content-Length) passes what is left of the tenant's quota (`tenant_limit` 0: none)."""
    quota = None
    if tenant_limit:
        with db.read() as session:
            quota = Quota(tenant_limit, tenant_limit - _stored_bytes(session, tenant_id))
        if declared_bytes is not None and declared_bytes > quota.left:
            raise quota.exceeded(declared_bytes)
    return Upload(artifacts_dir, max_bytes, quota, purpose)


def delete_file(db: Database, artifacts_dir: Path, tenant_id: str, file_id: str) -> None:
    """Delete one of this tenant's uploads (row and file). Raises NotFound for another
    tenant's file, Conflict while a queued or running job or evaluation uses it."""
    source = f"file:{file_id}"
    with db.transaction() as session:
        row = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id).with_for_update())
        if row is None:
            raise NotFound(f"no file {file_id}")
        users = session.scalars(
            select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(("queued", "running")),
                                 cast(Job.spec, Text).contains(source))
        ).all()
        users += session.scalars(
            select(Evaluation.id).where(Evaluation.tenant_id == tenant_id, Evaluation.status.in_(("queued", "running")),
                                        cast(Evaluation.dataset, Text).contains(source))
        ).all()
        if users:
            raise Conflict(f"file {file_id} is used by queued or running work ({', '.join(users[:5])}); "
                           "cancel it or wait until it ends, then delete the file")
        purpose = row.purpose or "dataset"
        session.delete(row)
    file_path(artifacts_dir, file_id, purpose).unlink(missing_ok=True)


def sweep_incoming(artifacts_dir: Path) -> int:
    """Remove partial uploads no live process holds (left by a crash); returns how many.
    Called when the API starts."""
    removed = 0
    for part in (artifacts_dir / "files" / INCOMING).glob("*.part"):
        try:
            with part.open("rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its upload lives
                part.unlink()
                removed += 1
        except (BlockingIOError, FileNotFoundError):
            continue
    return removed


def _stored_bytes(session: Session, tenant_id: str) -> int:
    return session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)) or 0


def _bounded_lines(handle: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The lines of a file, each read with at most `limit` bytes held; a longer line is
    skipped to its end and yielded as None (validation reports it)."""
    while line := handle.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := handle.readline(limit)) and not rest.endswith(b"\n"):
            pass
        yield None


def list_files(db: Database, tenant_id: str) -> list[dict]:
    """This tenant's uploads, newest first."""
    with db.transaction() as session:
        rows = session.scalars(
            select(File).where(File.tenant_id == tenant_id).order_by(File.created_at.desc(), File.id.desc())
        ).all()
    return [file_view(row) for row in rows]


def file_view(row: File) -> dict:
    return {
        "id": row.id,
        "source": f"file:{row.id}",  # what to put in a job spec's datasets
        "filename": row.filename,
        "bytes": row.bytes,
        "records": row.records,
        "sha256": row.sha256,
        "purpose": row.purpose or "dataset",
        "created_at": row.created_at,
    }
