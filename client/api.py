"""`Client(url, key)`: the AMFT HTTP API as Python calls.

    amft = Client(url, key)
    job = amft.jobs.create(spec)             # Idempotency-Key set for you
    for message in amft.jobs.events(job.id, stream=True): ...
    amft.jobs.wait(job.id).status            # 'succeeded' | 'failed' | 'cancelled'
    amft.generate(f"{job.id}:20", ["2+2="])
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel

from client.models import Job, JobPage
from client.transport import Transport

if TYPE_CHECKING:  # the API's own request models (pydantic only; no fastapi or torch)
    from service.evaluations import EvaluationRequest
    from service.inference import GenerateRequest
    from service.specs import JobSpec


def _body(value: BaseModel | dict) -> dict:
    """A request model as JSON (only the fields set, so server defaults apply), or a dict as is."""
    return value.model_dump(mode="json", exclude_unset=True) if isinstance(value, BaseModel) else value


class Jobs:
    def __init__(self, transport: Transport):
        self._t = transport

    def create(self, spec: JobSpec | dict, idempotency_key: str | None = None) -> Job:
        """Submit a job spec (a service.specs.JobSpec or a dict). A retried create with the
        same automatic Idempotency-Key returns the same job, never a second one."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return Job.model_validate(self._t.json("POST", "/jobs", json=_body(spec), headers=headers))

    def list(self, cursor: str | None = None, limit: int = 50, status: str | None = None) -> JobPage:
        """One page of your jobs, newest first."""
        params = {k: v for k, v in {"cursor": cursor, "limit": limit, "status": status}.items() if v is not None}
        return JobPage.model_validate(self._t.json("GET", "/jobs", params=params))

    def iter(self, status: str | None = None) -> Iterator[Job]:
        """All your jobs, page after page."""
        cursor = None
        while True:
            page = self.list(cursor=cursor, limit=200, status=status)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._t.json("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """A queued job ends at once; a running one checkpoints and ends `cancelled`."""
        return Job.model_validate(self._t.json("POST", f"/jobs/{job_id}/cancel"))

    def metrics(self, job_id: str, names: list[str] | None = None, after_step: int = 0) -> list[dict]:
        """Every per-step point after `after_step`, in step order (all pages)."""
        points: list[dict] = []
        while True:
            params = {"after_step": after_step, "limit": 1000, **({"names": ",".join(names)} if names else {})}
            page = self._t.json("GET", f"/jobs/{job_id}/metrics", params=params)
            points += page["points"]
            after_step = page["next_after_step"]
            if not page["has_more"]:
                return points

    def events(self, job_id: str, stream: bool = False, after_id: int = 0) -> Iterator[dict] | list[dict]:
        """The job's events. With stream=True: an iterator of live SSE messages
        {"event": "event"|"metrics"|"end", "id", "data"} that ends when the job does."""
        if stream:
            return self._t.sse(f"/jobs/{job_id}/events")
        return self._t.json("GET", f"/jobs/{job_id}/events", params={"after_id": after_id, "limit": 1000})["events"]

    def checkpoints(self, job_id: str) -> list[dict]:
        return self._t.json("GET", f"/jobs/{job_id}/checkpoints")["checkpoints"]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> Job:
        """Block until the job finishes (or raise TimeoutError after `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(poll)


class Files:
    def __init__(self, transport: Transport):
        self._t = transport

    def upload(self, path: str | Path, filename: str | None = None) -> dict:
        """Upload a JSONL dataset; use the answer's `source` (`file:<id>`) in a spec."""
        path = Path(path)
        with path.open("rb") as handle:
            return self._t.json("POST", "/files", params={"filename": filename or path.name}, content=handle,
                                headers={"Content-Type": "application/jsonl"})

    def list(self) -> list[dict]:
        return self._t.json("GET", "/files")["files"]


class Evaluations:
    def __init__(self, transport: Transport):
        self._t = transport

    def create(self, job_id: str, request: EvaluationRequest | dict | None = None) -> dict:
        """Queue an evaluation (a service.evaluations.EvaluationRequest or a dict; default: the
        latest checkpoint on builtin:arithmetic `id`)."""
        return self._t.json("POST", f"/jobs/{job_id}/evaluations", json=_body(request or {}))

    def get(self, job_id: str, evaluation_id: str) -> dict:
        """One evaluation with every item's prompt, output and correctness."""
        return self._t.json("GET", f"/jobs/{job_id}/evaluations/{evaluation_id}")

    def list(self, job_id: str) -> list[dict]:
        return self._t.json("GET", f"/jobs/{job_id}/evaluations")["evaluations"]

    def wait(self, job_id: str, evaluation_id: str, timeout: float = 600, poll: float = 1.0) -> dict:
        deadline = time.monotonic() + timeout
        while (evaluation := self.get(job_id, evaluation_id))["status"] not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"evaluation {evaluation_id} still {evaluation['status']} after {timeout}s")
            time.sleep(poll)
        return evaluation


class Client:
    """The AMFT API at `url` with API key `key`. Retries 429/503 with backoff (Retry-After
    honoured); errors raise client.ApiError with the server's message."""

    def __init__(self, url: str, key: str, timeout: float = 60.0, retries: int = 5):
        self._t = Transport(url, key, timeout=timeout, retries=retries)
        self.url = url.rstrip("/")
        self.jobs, self.files, self.evaluations = Jobs(self._t), Files(self._t), Evaluations(self._t)

    def generate(self, model: str | GenerateRequest, prompts: list | None = None, **sampling) -> dict:
        """Completions from `<job_id>`, `<job_id>:<step>` or `base:builtin:tiny`; a
        service.inference.GenerateRequest may be passed as `model` instead."""
        body = _body(model) if isinstance(model, BaseModel) else {"model": model, "prompts": prompts, **sampling}
        return self._t.json("POST", "/generate", json=body, timeout=max(self._t.http.timeout.read or 0, 300))

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
