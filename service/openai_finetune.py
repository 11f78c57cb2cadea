"""OpenAI fine-tuning front door (issue 17): `/v1/files` and `/v1/fine_tuning/jobs` mapped
onto our files and jobs, so the unmodified `openai` client works.

- `method.type` supervised -> `sft`; reinforcement (with a `string_check` grader against
  the record's answer) -> `grpo` with our math verifier; our own methods and any other spec
  field through the extension object `amft` (the client's `extra_body={"amft": {...}}`).
- A parameter that has no meaning here answers 400 in OpenAI's error shape, naming it.
- Fine-tuning files in OpenAI's chat format (`{"messages": [...]}`, last message the
  assistant's) are converted to our records (prompt = the earlier messages, completion =
  the last one) as they are uploaded.
"""

from __future__ import annotations

import json
import math

from sqlalchemy import select

from service import jobs as job_reads
from service import lifecycle, metrics
from service.db import Database
from service.errors import NotFound
from service.files import Upload
from service.models import File, Job
from service.specs import JobSpec, spec_error_lines

PREFIX = "ftjob-"
METHODS = {"supervised": "sft", "reinforcement": "grpo"}
# suffix and metadata have no meaning here (model ids are job ids): they answer 400 like any unknown field.
KNOWN = {"model", "training_file", "validation_file", "hyperparameters", "method", "seed", "integrations", "amft"}
BASE_LEARNING_RATE = 1e-5  # learning_rate_multiplier scales this


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def upload_file(db: Database, artifacts_dir, max_bytes: int, tenant_id: str, filename: str, purpose: str,
                content: bytes) -> dict:
    """Store a fine-tuning JSONL file (chat format converted); returns an OpenAI File object."""
    if purpose != "fine-tune":
        raise OpenAIError(400, f"purpose {purpose!r} is not supported here; use 'fine-tune'", "purpose")
    upload = Upload(artifacts_dir, max_bytes)
    try:
        for number, line in enumerate(content.splitlines(), 1):
            if line.strip():
                upload.write(json.dumps(_record(line, number)).encode() + b"\n")
        row = upload.commit(db, tenant_id, filename)
    except OpenAIError:
        upload.discard()
        raise
    except Exception as error:  # InvalidInput (bad records), TooLarge
        upload.discard()
        raise OpenAIError(400, getattr(error, "message", str(error)), "file") from error
    return {"id": f"file-{row['id']}", "object": "file", "bytes": row["bytes"], "created_at": _epoch(row["created_at"]),
            "filename": row["filename"], "purpose": "fine-tune", "status": "processed"}


def create_job(db: Database, tenant_id: str, body: dict, publish, max_attempts: int) -> dict:
    """Map an OpenAI fine-tuning request onto a job spec and queue it."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise OpenAIError(400, f"unknown parameter {unknown[0]!r}", unknown[0])
    try:
        spec = _spec(db, tenant_id, body)
    except (AttributeError, TypeError) as error:  # an object where a string was due, or the reverse
        raise OpenAIError(400, f"malformed request body: {error}; see the fine-tuning API reference") from error
    try:
        validated = JobSpec.model_validate(spec)
    except ValueError as error:
        lines = spec_error_lines(error)
        raise OpenAIError(400, "; ".join(lines), lines[0].split(":")[0]) from error
    job, _ = lifecycle.create_job(db, tenant_id, validated, None, publish, max_attempts)
    return retrieve(db, tenant_id, PREFIX + job.id)


def retrieve(db: Database, tenant_id: str, ft_id: str) -> dict:
    """One job as an OpenAI FineTuningJob object."""
    job = _job(db, tenant_id, ft_id)
    tokens = metrics.trained_tokens(db, [job["id"]]).get(job["id"]) if job["status"] == "succeeded" else None
    return _job_object(job, tokens)


def list_jobs(db: Database, tenant_id: str, limit: int, after: str | None = None) -> dict:
    """A page of jobs, newest first; `after` (a job id from the previous page) continues
    past it."""
    cursor = None
    if after:
        try:
            cursor = job_reads.cursor_after(db, tenant_id, _our_id(after))
        except NotFound as error:
            raise OpenAIError(400, f"after: no fine-tuning job {after!r} (pass the last id of the previous page)",
                              "after") from error
    page = job_reads.list_jobs(db, tenant_id, cursor, min(max(limit, 1), 200))
    # List items are summaries (issue 13, item 11); OpenAI's job object needs each spec:
    # one query for the page's rows.
    ids = [summary["id"] for summary in page["jobs"]]
    with db.read() as session:
        rows = {row.id: row for row in session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.id.in_(ids)))}
        jobs = [job_reads.job_view(rows[job_id]) for job_id in ids if job_id in rows]
    tokens = metrics.trained_tokens(db, [job["id"] for job in jobs if job["status"] == "succeeded"])
    data = [_job_object(job, tokens.get(job["id"])) for job in jobs]
    return {"object": "list", "data": data, "has_more": page["next_cursor"] is not None,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def cancel(db: Database, tenant_id: str, ft_id: str) -> dict:
    try:
        lifecycle.cancel_job(db, tenant_id, _our_id(ft_id))
    except NotFound as error:
        raise OpenAIError(404, error.message, "fine_tuning_job_id", "fine_tune_not_found") from error
    except Exception as error:  # Conflict: already finished
        raise OpenAIError(400, getattr(error, "message", str(error)), "fine_tuning_job_id") from error
    return retrieve(db, tenant_id, ft_id)


def events(db: Database, tenant_id: str, ft_id: str, limit: int) -> dict:
    """The job's events, newest first, as fine_tuning.job.event objects."""
    rows = job_reads.list_events(db, tenant_id, _job(db, tenant_id, ft_id)["id"], 0, 1000)
    data = [{"object": "fine_tuning.job.event", "id": f"ftevent-{e['id']}", "created_at": _epoch(e["created_at"]),
             "level": "error" if e["kind"] == "failed" else "info", "message": e["message"], "type": "message",
             "data": e["data"] or {}} for e in reversed(rows)]
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


def checkpoints(db: Database, tenant_id: str, ft_id: str) -> dict:
    job = _job(db, tenant_id, ft_id)
    rows = job_reads.list_checkpoints(db, tenant_id, job["id"])
    data = [{"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job['id']}-{c['step']}",
             "created_at": _epoch(c["created_at"]), "fine_tuned_model_checkpoint": f"{job['id']}:{c['step']}",
             "fine_tuning_job_id": PREFIX + job["id"], "step_number": c["step"], "metrics": {}}
            for c in reversed(rows)]
    return {"object": "list", "data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


# ------------------------------------------------------------------------ mapping


def _spec(db: Database, tenant_id: str, body: dict) -> dict:
    method = body.get("method") or {"type": "supervised"}
    kind = method.get("type")
    if kind not in METHODS:
        raise OpenAIError(400, f"method.type {kind!r} is not supported; use supervised or reinforcement "
                               "(other methods through extra_body amft.method)", "method.type")
    options = method.get(kind) or {}
    hyper = {**(body.get("hyperparameters") or {}), **(options.get("hyperparameters") or {})}
    unsupported = sorted(set(hyper) - {"n_epochs", "batch_size", "learning_rate_multiplier"})
    if unsupported:
        raise OpenAIError(400, f"hyperparameter {unsupported[0]!r} is not supported here", f"hyperparameters.{unsupported[0]}")
    if kind == "reinforcement":
        grader = options.get("grader") or {}
        if grader.get("type") != "string_check":
            raise OpenAIError(400, "reinforcement needs a grader of type string_check (scored here by math "
                                   "verification against each record's answer)", "method.reinforcement.grader")
    train_file, records = _file(db, tenant_id, body.get("training_file"), "training_file")
    batch = _auto(hyper.get("batch_size"), 4, "batch_size")
    epochs = _auto(hyper.get("n_epochs"), 1, "n_epochs")
    multiplier = _auto(hyper.get("learning_rate_multiplier"), 1.0, "learning_rate_multiplier")
    steps = max(1, math.ceil(records * epochs / batch))
    source = {"source": f"file:{train_file}"}
    spec: dict = {"method": METHODS[kind], "model": body.get("model"),
                  "datasets": {"sft": source, "rl": source},
                  "training": {"total_steps": steps, "warmup_steps": 0, "sft_batch_size": batch,
                               "rl_prompts_per_step": batch, "learning_rate": BASE_LEARNING_RATE * multiplier}}
    if body.get("validation_file"):
        spec["datasets"]["validation"] = {"source": f"file:{_file(db, tenant_id, body['validation_file'], 'validation_file')[0]}"}
    if body.get("integrations"):
        spec["integrations"] = _integrations(body["integrations"])
    if body.get("seed") is not None:
        spec["training"]["seed"] = body["seed"]
    for key, value in (body.get("amft") or {}).items():  # our extension: any spec field
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) and isinstance(value, dict) else value
    return spec


def _integrations(items) -> list[dict]:
    """OpenAI's `[{"type": "wandb", "wandb": {"project", "name"}}]` as our wandb integration;
    the entity (like the host and key) is the operator's, so naming one is refused."""
    if not isinstance(items, list):
        raise OpenAIError(400, "integrations must be a list", "integrations")
    mapped = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") != "wandb":
            raise OpenAIError(400, "only integrations of type wandb are supported (others through extra_body "
                                   "amft.integrations)", "integrations.type")
        options = item.get("wandb") or {}
        for name in sorted(set(options) - {"project", "name"}):
            raise OpenAIError(400, f"integrations.wandb.{name} is not supported here: the W&B entity, host and key "
                                   "are set by this deployment", f"integrations.wandb.{name}")
        mapped.append({"kind": "wandb", "project": options.get("project") or "amft", "run_name": options.get("name")})
    return mapped


def _auto(value, default, name: str):
    if value in (None, "auto"):
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise OpenAIError(400, f"{name} must be 'auto' or a positive number", f"hyperparameters.{name}")
    return value


def _file(db: Database, tenant_id: str, file_id, param: str) -> tuple[str, int]:
    raw = str(file_id or "").removeprefix("file-")
    with db.read() as session:
        row = session.get(File, raw) if raw else None
        if row is None or row.tenant_id != tenant_id:
            raise OpenAIError(400, f"{param}: no such file {file_id!r} (upload it with files.create)", param)
        return row.id, row.records


def _record(line: bytes, number: int) -> dict:
    try:
        item = json.loads(line)
    except ValueError:
        raise OpenAIError(400, f"line {number}: not JSON", "file") from None
    messages = item.get("messages") if isinstance(item, dict) else None
    if not isinstance(messages, list):
        return item  # already our record format; validated by the upload
    if len(messages) < 2 or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise OpenAIError(400, f"line {number}: the last message must be the assistant's answer", "file")
    record = {"prompt": messages[:-1], "completion": messages[-1].get("content", "")}
    if "answer" in item:
        record["answer"] = str(item["answer"])
    return record


def _our_id(ft_id: str) -> str:
    return ft_id.removeprefix(PREFIX)


def _job(db: Database, tenant_id: str, ft_id: str) -> dict:
    try:
        return job_reads.get_job(db, tenant_id, _our_id(ft_id))
    except NotFound as error:
        raise OpenAIError(404, f"no fine-tuning job {ft_id}", "fine_tuning_job_id", "fine_tune_not_found") from error


def _job_object(job: dict, trained_tokens: int | None = None) -> dict:
    """`trained_tokens`: prompt and completion tokens trained on (succeeded jobs; else null)."""
    spec = job["spec"]
    training = spec["training"]
    sft_source = spec["datasets"]["sft"]["source"]
    error = job["error"]
    return {
        "id": PREFIX + job["id"], "object": "fine_tuning.job", "model": spec["model"],
        "created_at": _epoch(job["created_at"]), "finished_at": _epoch(job["finished_at"]),
        "fine_tuned_model": job["id"] if job["status"] == "succeeded" else None,
        "organization_id": "org-amft", "result_files": [], "status": job["status"],
        "training_file": "file-" + sft_source.removeprefix("file:") if sft_source.startswith("file:") else sft_source,
        "validation_file": None, "seed": training.get("seed", 0), "trained_tokens": trained_tokens,
        "hyperparameters": {"n_epochs": "auto", "batch_size": training.get("sft_batch_size"),
                            "learning_rate_multiplier": training.get("learning_rate", BASE_LEARNING_RATE) / BASE_LEARNING_RATE},
        "method": {"type": "reinforcement" if spec["method"] == "grpo" else "supervised"},
        "error": {"code": error["code"], "message": error["message"], "param": None} if error else None,
        "estimated_finish": None, "metadata": None,
        "integrations": [{"type": "wandb", "wandb": {"project": i["project"], "name": i.get("run_name"), "entity": None,
                                                     "tags": None}}
                         for i in spec.get("integrations") or [] if i["kind"] == "wandb"],
    }


def _epoch(value) -> int | None:
    return int(value.timestamp()) if value is not None else None
