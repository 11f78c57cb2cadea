"""Uploaded files: streamed to disk under a size cap, validated, then moved into place and
recorded. A spec names one as `file:<id>`. A rejected upload leaves neither a file nor a
row behind. Two purposes:

- `dataset`: JSONL records, validated line by line, stored as `<artifacts>/files/<id>.jsonl`;
- `grader`: a python file defining `reward(completions, **columns)` (TRL's signature),
  checked by parsing only (never executed here), stored as `<artifacts>/files/<id>.py` and
  run by workers in a sandbox (workers/trainer/sandbox.py).
"""

from __future__ import annotations

import ast
import hashlib
import os
import uuid
from pathlib import Path

from sqlalchemy import select

from service.db import Database
from service.errors import InvalidInput, TooLarge
from service.models import File
from service.records import RecordError, parse_jsonl


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
    """One upload in progress: `write` chunks as they arrive, then `commit` or `discard`."""

    def __init__(self, artifacts_dir: Path, max_bytes: int, purpose: str = "dataset"):
        self.artifacts_dir = artifacts_dir
        self.purpose = purpose
        self.max_bytes = max_bytes
        self.size = 0
        self._sha = hashlib.sha256()
        incoming = artifacts_dir / "files" / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        self._part = incoming / f"{uuid.uuid4().hex}.part"
        self._out = self._part.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises TooLarge (and discards) once the cap is passed."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise TooLarge(f"upload exceeds this deployment's limit of {self.max_bytes} bytes; split the file")
        self._sha.update(chunk)
        self._out.write(chunk)

    def discard(self) -> None:
        """Drop the partial file (safe to call twice)."""
        self._out.close()
        self._part.unlink(missing_ok=True)

    def commit(self, db: Database, tenant_id: str, filename: str) -> dict:
        """Validate every line, then store the file and its row; returns the file's view.

        Raises InvalidInput listing the bad lines (with line numbers) if any record is wrong.
        """
        self._out.close()
        try:
            records = self._validate()
        except RecordError as error:
            self.discard()
            raise InvalidInput(f"{filename}: {error}", [f"{filename}: {p}" for p in error.problems]) from error
        except InvalidInput as error:
            self.discard()
            raise InvalidInput(f"{filename}: {error}") from error
        row = File(id=uuid.uuid4().hex, tenant_id=tenant_id, filename=filename[:255], bytes=self.size,
                   records=records, sha256=self._sha.hexdigest(), purpose=self.purpose)
        target = file_path(self.artifacts_dir, row.id, self.purpose)
        os.replace(self._part, target)
        try:
            with db.transaction() as session:
                session.add(row)
        except Exception:
            target.unlink(missing_ok=True)
            raise
        return file_view(row)


    def _validate(self) -> int:
        """Records in a dataset (0 for a grader); raises RecordError / InvalidInput."""
        if self.purpose == "grader":
            check_grader_source(self._part.read_bytes())
            return 0
        with self._part.open("rb") as lines:
            return len(parse_jsonl(lines))


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
        "purpose": row.purpose or "dataset",
        "bytes": row.bytes,
        "records": row.records,
        "sha256": row.sha256,
        "created_at": row.created_at,
    }
