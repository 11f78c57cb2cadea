"""Generation requests: validation against this deployment's limits, resolving a model
reference to a checkpoint the tenant owns, and shaping the worker's reply.

Model references (`model`):
- `<job_id>`: the job's latest recorded checkpoint;
- `<job_id>:<step>`: the checkpoint at that step;
- `base:<source>`: an untrained built-in model (`builtin:tiny`, `builtin:smollm2-135m`).
A path is never accepted: the worker loads checkpoints from the artifact store by id.

The API passes `run` (send to the inference worker and wait), so this module imports
neither fastapi nor celery.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select

from service.db import Database
from service.errors import Conflict, InvalidInput, NotFound
from service.models import Checkpoint, Job
from service.settings import get_settings

Run = Callable[[dict], dict]
Stream = Callable[[dict], Iterator[dict]]  # a streamed run: text deltas, then the reply
BASE_MODELS = ("builtin:tiny", "builtin:smollm2-135m")
MODEL_REF = re.compile(r"(?P<job>[0-9a-f]{32})(:(?P<step>\d{1,9}))?")  # fullmatch: `$` passes "...\n" (issue 13, item 4)
MAX_STOPS, MAX_STOP_CHARS = 4, 64


class ChatMessage(BaseModel):
    """One chat turn. Templates come from the checkpoint's tokenizer, never the request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite floats only (issue 13, item 2)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class SamplingFields(BaseModel):
    """Sampling settings shared by /generate and evaluations; capped by settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_tokens: int = Field(128, ge=1, description="New tokens per completion (capped by AMFT_GENERATE_MAX_TOKENS).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, description="Completions per prompt (capped by AMFT_GENERATE_MAX_N).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Makes sampling reproducible.")
    stop: list[str] = Field(default_factory=list, description=f"Up to {MAX_STOPS} stop strings.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, stops: list[str]) -> list[str]:
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOPS} non-empty stop strings of up to {MAX_STOP_CHARS} characters")
        return stops

    @model_validator(mode="after")
    def _within_limits(self):
        limits = get_settings()
        if self.max_tokens > limits.generate_max_tokens:
            raise ValueError(f"max_tokens = {self.max_tokens} exceeds this deployment's limit of {limits.generate_max_tokens}")
        if self.n > limits.generate_max_n:
            raise ValueError(f"n = {self.n} exceeds this deployment's limit of {limits.generate_max_n}")
        return self

    def sampling(self) -> dict:
        """The worker's Sampling as JSON."""
        return self.model_dump(include={"max_tokens", "temperature", "top_p", "n", "seed", "stop"})


class GenerateRequest(SamplingFields):
    """POST /generate."""

    model: str = Field(description="<job_id> | <job_id>:<step> | base:builtin:tiny | base:builtin:smollm2-135m.")
    prompts: list[str | list[ChatMessage]] = Field(min_length=1, description="Texts, or chat conversations.")

    @field_validator("prompts")
    @classmethod
    def _few_prompts(cls, prompts: list) -> list:
        limit = get_settings().generate_max_prompts
        if len(prompts) > limit:
            raise ValueError(f"{len(prompts)} prompts exceed this deployment's limit of {limit} per request")
        return prompts

    @model_validator(mode="after")
    def _bounded_work(self):
        check_work(len(self.prompts), self.n, self.max_tokens)
        return self


def check_work(prompts: int, n: int, max_tokens: int) -> None:
    """Bound the work of one request: prompts x n x max_tokens tokens (ValueError -> 422)."""
    limit = get_settings().generate_max_work_tokens
    if prompts * n * max_tokens > limit:
        raise ValueError(
            f"{prompts} prompt(s) x n {n} x max_tokens {max_tokens} = {prompts * n * max_tokens} tokens exceed this "
            f"deployment's limit of {limit} per request; send fewer prompts, a smaller n or a smaller max_tokens"
        )


def resolve_model(db: Database, tenant_id: str, ref: str) -> dict:
    """The worker's model reference for `ref`, checked against the tenant's checkpoints.

    Returns {"kind": "checkpoint", "job_id", "step", "name"} or {"kind": "base", "source", "name"}.
    """
    if ref.startswith("base:"):
        source = ref.removeprefix("base:")
        if source not in BASE_MODELS:
            raise InvalidInput(f"model: base models are {', '.join('base:' + s for s in BASE_MODELS)}; got {ref!r}")
        return {"kind": "base", "source": source, "name": ref}
    match = MODEL_REF.fullmatch(ref)
    if match is None:
        raise InvalidInput(f"model: use <job_id>, <job_id>:<step> or base:<builtin model>; got {ref[:80]!r}")
    job_id, step = match["job"], None if match["step"] is None else int(match["step"])
    with db.transaction() as session:
        job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
        if job is None:
            raise NotFound(f"no job {job_id}: use an id from GET /jobs")
        steps = session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
    if not steps:
        raise Conflict(
            f"job {job_id} has no checkpoint yet (status {job.status}); one is written every "
            f"training.save_every steps and at the end: retry later"
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise NotFound(f"job {job_id} has no checkpoint at step {step}; its checkpoints are at steps {steps}")
    return {"kind": "checkpoint", "job_id": job_id, "step": step, "name": f"{job_id}:{step}"}


def job_tenant(db: Database, job_id: str) -> str:
    """The tenant that owns job `job_id` (a model grader's judge is scoped to it)."""
    with db.read() as session:
        tenant = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant is None:
        raise NotFound(f"no job {job_id}")
    return tenant


def run_generation(db: Database, tenant_id: str, model_ref: str, prompts: list, sampling: dict, run: Run, raw: bool = False,
                   fit_context: bool = False) -> dict:
    """Resolve the model, run the request on the worker; the worker's reply plus `model`.
    `fit_context`: max_tokens is an upper bound the worker lowers to fit the model's context."""
    model = resolve_model(db, tenant_id, model_ref)
    payload = {"model": model, "prompts": prompts, "sampling": sampling, "raw": raw, "tenant": tenant_id}
    reply = run({**payload, "fit_context": True} if fit_context else payload)
    return {**reply, "model": model["name"]}


def stream_generation(db: Database, tenant_id: str, model_ref: str, prompts: list, sampling: dict, stream: Stream,
                      raw: bool = False, fit_context: bool = False) -> tuple[str, Iterator[dict]]:
    """Resolve the model and start a streamed request on the worker: (model name, the
    worker's messages: text deltas, then the reply)."""
    model = resolve_model(db, tenant_id, model_ref)
    payload = {"model": model, "prompts": prompts, "sampling": sampling, "raw": raw, "tenant": tenant_id}
    return model["name"], stream({**payload, "fit_context": True} if fit_context else payload)


def generate(db: Database, tenant_id: str, request: GenerateRequest, run: Run) -> dict:
    """POST /generate: completions with token counts and finish reasons, per prompt."""
    prompts = [p if isinstance(p, str) else [m.model_dump() for m in p] for p in request.prompts]
    reply = run_generation(db, tenant_id, request.model, prompts, request.sampling(), run)
    results = [
        {
            "index": index,
            "prompt_tokens": result["prompt_tokens"],
            "completions": [{"index": i, **c} for i, c in enumerate(result["completions"])],
        }
        for index, result in enumerate(reply["results"])
    ]
    prompt_tokens = sum(r["prompt_tokens"] for r in results)
    completion_tokens = sum(c["tokens"] for r in results for c in r["completions"])
    return {
        "id": "gen-" + uuid.uuid4().hex,
        "created": int(time.time()),
        "model": reply["model"],
        "backend": reply.get("backend"),
        "results": results,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def list_models(db: Database, tenant_id: str) -> list[dict]:
    """Every model the tenant can generate from: each job (latest checkpoint), each
    checkpoint, and the built-in base models."""
    with db.transaction() as session:
        rows = session.execute(
            select(Checkpoint.job_id, Checkpoint.step, Checkpoint.created_at)
            .join(Job, Job.id == Checkpoint.job_id)
            .where(Job.tenant_id == tenant_id)
            .order_by(Checkpoint.job_id, Checkpoint.step)
        ).all()
    models: dict[str, int] = {}
    for job_id, step, created_at in rows:
        created = int(created_at.timestamp())
        models[job_id] = created
        models[f"{job_id}:{step}"] = created
    listed = [{"id": name, "created": created} for name, created in models.items()]
    return listed + [{"id": f"base:{source}", "created": 0} for source in BASE_MODELS]
