"""Typed views of the API's answers. Requests reuse the API's own pydantic models
(service.specs.JobSpec, service.inference.GenerateRequest, service.evaluations.EvaluationRequest);
these answer models allow extra fields, so a newer server does not break an older client."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

TERMINAL = ("succeeded", "failed", "cancelled")


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(Answer):
    step: int = 0
    total_steps: int = 0
    fraction: float = 0.0


class Latest(Answer):
    mu: float | None = None
    reward_mean: float | None = None


class JobError(Answer):
    code: str | None = None
    message: str | None = None


class Job(Answer):
    """GET /jobs/{id}."""

    id: str
    status: str
    method: str | None = None
    model: str | None = None
    spec: dict = {}
    attempt: int = 0
    cancel_requested: bool = False
    progress: Progress = Progress()
    eta_seconds: float | None = None
    latest: Latest = Latest()
    error: JobError | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class JobPage(Answer):
    """GET /jobs: newest first; pass next_cursor for the next page."""

    jobs: list[Job]
    next_cursor: str | None = None
