"""Weights out (issue 17): a checkpoint's Hugging Face folder as a streamed tar archive.

The archive is plain (uncompressed) POSIX tar with a fixed layout: members sorted by name,
mtime 0, uid/gid 0, mode 0644. Every byte offset is therefore known before the first byte
is sent, so the archive has an exact Content-Length and any byte range of it can be served
(HTTP Range: a multi-GB download resumes where it broke). File bodies are read in chunks
straight from disk; no file is ever held in memory whole.

Only what a user loads with `from_pretrained` goes in: config, generation config,
tokenizer and safetensors weights (or, for LoRA, the adapter and base_model.json). The
optimizer state, RNG state, trainer state and the manifest stay behind.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy import select

from service.db import Database
from service.errors import Conflict, InvalidInput, NotFound
from service.models import Checkpoint, Job

BLOCK = 512
CHUNK = 1 << 20  # bytes read from disk per chunk
# Resume state, not model: never in a download (workers/trainer/checkpoint.py names them).
TRAINER_ONLY = {"optimizer.safetensors", "trainer_state.json", "rng.safetensors", "manifest.json",
                "reference.safetensors", "meta_validation.safetensors"}
MERGED_FOLDER = "merged"  # inside a LoRA checkpoint: the merged full model, once built
FORMATS = ("full", "adapter", "merged")
RANGE = re.compile(r"bytes=(\d*)-(\d*)")  # fullmatch


class RangeNotSatisfiable(InvalidInput):
    """A Range header outside the archive (HTTP 416)."""


@dataclass(frozen=True)
class Segment:
    """`length` bytes of the archive at `offset`: literal header bytes, or a file's body."""

    offset: int
    length: int
    data: bytes | None = None  # a header or padding
    path: Path | None = None  # a file body (read in chunks)


@dataclass(frozen=True)
class Archive:
    """A computed tar layout: name, exact size, an ETag, and its byte segments."""

    filename: str
    size: int
    etag: str
    segments: tuple[Segment, ...]

    def iter_bytes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The archive's bytes [start, end] (inclusive end; None = to the last byte)."""
        end = self.size - 1 if end is None else end
        for segment in self.segments:
            lo, hi = max(start, segment.offset), min(end + 1, segment.offset + segment.length)
            if lo >= hi:
                continue
            if segment.data is not None:
                yield segment.data[lo - segment.offset : hi - segment.offset]
            else:
                yield from _read_file(segment.path, lo - segment.offset, hi - lo)


def checkpoint_archive(db: Database, artifacts_dir: Path, tenant_id: str, job_id: str, step: int, fmt: str | None) -> Archive:
    """The archive of one checkpoint of this tenant's job.

    `fmt`: `full` (a full fine-tune's folder), `adapter` (a LoRA checkpoint as saved) or
    `merged` (a LoRA checkpoint merged into its base, built by the inference worker; see
    `merged_folder`). None picks `full` or `adapter` by what the checkpoint holds.
    """
    folder = checkpoint_folder(db, artifacts_dir, tenant_id, job_id, step)
    is_lora = (folder / "adapter_config.json").is_file()
    fmt = fmt or ("adapter" if is_lora else "full")
    if fmt not in FORMATS:
        raise InvalidInput(f"format: must be one of {', '.join(FORMATS)}")
    if is_lora and fmt == "full":
        raise InvalidInput("format=full: this is a LoRA job; ask for format=adapter or format=merged")
    if not is_lora and fmt != "full":
        raise InvalidInput(f"format={fmt}: only LoRA jobs have adapters; omit format for the full weights")
    if fmt == "merged":
        folder = folder / MERGED_FOLDER
        if not (folder / "config.json").is_file():
            raise Conflict("the merged weights are not built yet; retry shortly")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in TRAINER_ONLY)
    return build_archive(f"{job_id}-step-{step}-{fmt}", files)


def tensorboard_archive(db: Database, artifacts_dir: Path, tenant_id: str, job_id: str) -> Archive:
    """The job's TensorBoard event files (spec `integrations: [{kind: tensorboard}]`)."""
    with db.read() as session:
        if session.scalar(select(Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id)) is None:
            raise NotFound(f"no job {job_id}")
    folder = artifacts_dir / "jobs" / job_id / "tensorboard"
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise NotFound(f"job {job_id} has no TensorBoard files (add integrations: [{{kind: tensorboard}}] to its spec)")
    return build_archive(f"{job_id}-tensorboard", files)


def checkpoint_folder(db: Database, artifacts_dir: Path, tenant_id: str, job_id: str, step: int) -> Path:
    """The folder of a recorded checkpoint of this tenant's job (404 for anyone else's)."""
    with db.read() as session:
        job = session.scalar(select(Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id))
        if job is None:
            raise NotFound(f"no job {job_id}")
        rows = session.execute(select(Checkpoint.step, Checkpoint.path).where(Checkpoint.job_id == job_id)).all()
    paths = dict(rows)
    if step not in paths:
        raise NotFound(f"job {job_id} has no checkpoint at step {step}; it has steps {sorted(paths)}")
    folder = (artifacts_dir / paths[step]).resolve()
    if not folder.is_relative_to(artifacts_dir.resolve()) or not folder.is_dir():
        raise NotFound(f"the checkpoint at step {step} of job {job_id} is gone (deleted by retention?)")
    return folder


def build_archive(name: str, files: list[Path]) -> Archive:
    """The deterministic tar layout of `files`, each stored as `<name>/<file name>`."""
    segments, offset, digest = [], 0, hashlib.sha256()
    for path in files:
        stat = path.stat()
        info = tarfile.TarInfo(f"{name}/{path.name}")
        info.size, info.mtime, info.mode, info.uid, info.gid = stat.st_size, 0, 0o644, 0, 0
        header = info.tobuf(format=tarfile.PAX_FORMAT)  # PAX: files over 8 GiB still fit
        segments.append(Segment(offset, len(header), data=header))
        offset += len(header)
        segments.append(Segment(offset, stat.st_size, path=path))
        offset += stat.st_size
        padding = -stat.st_size % BLOCK
        if padding:
            segments.append(Segment(offset, padding, data=bytes(padding)))
            offset += padding
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    segments.append(Segment(offset, 2 * BLOCK, data=bytes(2 * BLOCK)))  # end-of-archive marker
    offset += 2 * BLOCK
    return Archive(f"{name}.tar", offset, f'"{digest.hexdigest()[:32]}"', tuple(segments))


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) of a single `Range: bytes=...` header; None = whole body.

    Raises RangeNotSatisfiable for a range outside the archive (the API answers 416)."""
    if not header:
        return None
    match = RANGE.fullmatch(header.strip())
    if not match or match.groups() == ("", ""):
        return None  # multiple or malformed ranges: RFC 9110 lets a server send it all
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"Range {header!r} is outside the archive of {size} bytes")
    return start, end


def _read_file(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(offset)
        while length > 0:
            chunk = handle.read(min(CHUNK, length))
            if not chunk:  # the file shrank underneath us: never send a short archive silently
                raise OSError(f"{path.name} changed while it was being sent")
            length -= len(chunk)
            yield chunk
