"""Deployment settings, read once from `AMFT_*` environment variables.

The defaults are the embedded mode: everything under one local folder (`AMFT_HOME`),
SQLite for the job store and a SQLite-backed Celery broker, so `amft serve` needs no
server. Production sets `AMFT_DATABASE_URL` and `AMFT_BROKER_URL` to PostgreSQL and Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All knobs of one deployment. Job-level choices live in the job spec instead."""

    model_config = SettingsConfigDict(env_prefix="AMFT_", extra="ignore")

    home: Path = Field(Path(".amft"), description="Root folder of the embedded default.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home.")
    broker_url: str | None = Field(None, description="Celery broker URL; default SQLite in home.")
    artifacts_dir: Path | None = Field(None, description="Checkpoints and uploads; default home/artifacts.")
    models_dir: Path | None = Field(None, description="Folder of local models named by `local:NAME`.")
    cache_dir: Path | None = Field(None, description="Converted built-in models; default home/cache.")
    datasets_dir: Path = Field(
        Path("../shared/data"), description="Folder holding gsm8k/ and svamp/ for the named datasets."
    )

    # Limits a job spec is validated against.
    max_total_steps: int = Field(100_000, description="Largest total_steps a job may ask for.")
    max_tokens: int = Field(4096, description="Largest prompt or completion length in tokens.")
    max_batch_size: int = Field(512, description="Largest SFT batch or RL prompts per step.")
    max_generations: int = Field(64, description="Largest GRPO group size.")
    max_upload_bytes: int = Field(50 * 1024 * 1024, description="Largest dataset upload.")

    # Generation limits for /generate and evaluation.
    generate_max_tokens: int = Field(1024, description="Cap on max_tokens of a generation request.")
    generate_max_n: int = Field(16, description="Cap on n of a generation request.")
    generate_max_prompts: int = Field(64, description="Cap on prompts in one generation request.")

    # Training workers.
    cuda_graph_rollouts: bool = Field(
        True, description="On CUDA, decode rollouts with a static KV cache replayed as CUDA graphs (false: eager)."
    )

    # Job lifecycle.
    lease_seconds: float = Field(60.0, description="A running job whose lease is older is reaped.")
    heartbeat_seconds: float = Field(5.0, description="How often a worker renews its lease.")
    max_attempts: int = Field(3, description="Attempts before a job that keeps dying is failed.")
    reaper_seconds: float = Field(
        10.0, description="How often the reaper looks for expired leases (0 disables it in this process)."
    )
    requeue_unclaimed_seconds: float = Field(
        300.0, description="A job queued this long without a claim is republished (lost broker message)."
    )

    # Service process.
    api_host: str = Field("127.0.0.1", description="Where `amft serve` listens.")
    api_port: int = Field(8000, description="Port of `amft serve`.")
    max_request_bytes: int = Field(1024 * 1024, description="Largest JSON request body (uploads: max_upload_bytes).")
    broker_prefix: str = Field("", description="Prefix for every broker key (Redis), to share one Redis.")
    # Default 0 (issue 6, case 18): a revoked key must fail on the very next request. A
    # deployment may trade that for fewer key lookups by setting a few seconds here.
    auth_cache_seconds: float = Field(
        0.0, description="How long an API process trusts a verified key (a revocation takes this long); 0 = off."
    )

    # Inference worker (issue 4): engines, micro-batching, evaluation.
    inference_backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="Generation backend; auto = vllm when importable and CUDA is present."
    )
    inference_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="transformers backend device.")
    inference_cache_bytes: int = Field(
        8 * 1024**3, description="Memory bound of the engine cache (LRU over loaded checkpoints)."
    )
    inference_batch_window_ms: float = Field(
        5.0, description="How long a request waits for others to share its generate call."
    )
    inference_max_batch_rows: int = Field(64, description="Most sequences decoded in one generate call.")
    inference_timeout_seconds: float = Field(
        120.0, description="How long /generate waits for the inference worker before answering 504."
    )
    inference_concurrency: int = Field(8, description="Threads of the inference worker (concurrent tasks).")
    inference_torch_threads: int | None = Field(None, description="torch intra-op threads in the inference worker.")
    vllm_gpu_memory_utilization: float = Field(0.85, description="vLLM's share of GPU memory per engine.")
    vllm_max_lora_rank: int = Field(64, description="Largest LoRA rank the vLLM engine accepts.")
    evaluation_max_items: int = Field(2000, description="Most dataset items one evaluation may score.")
    # Inference fairness and bounds (issue 13, item 7; issue 19).
    generate_max_work_tokens: int = Field(
        131072, description="Cap on prompts x n x max_tokens of one generation request (422 above it)."
    )

    # Event streams (issue 13, item 5).
    sse_key_recheck_seconds: float = Field(
        30.0, gt=0, description="How often an open event stream re-checks its API key; a revoked key ends it."
    )
    # Per-tenant quotas and request sizes (issue 13, items 8, 9 and 11).
    max_queued_jobs_per_tenant: int = Field(
        100, description="Most queued jobs one tenant may have; POST /jobs past it answers 429."
    )
    max_running_jobs_per_tenant: int = Field(
        4, description="Most jobs of one tenant running at once; further ones wait queued (0 = no limit)."
    )
    max_upload_bytes_per_tenant: int = Field(
        1024**3, description="Most bytes of uploaded files one tenant may store; POST /files past it answers 429."
    )
    max_spec_bytes: int = Field(64 * 1024, description="Largest job spec (as JSON); POST /jobs past it answers 413.")
    # Issue 13: slow clients (item 6) and worker supervision (item 12).
    http_header_timeout_seconds: float = Field(
        10.0, description="A request's line and headers must arrive within this (else 408 and close)."
    )
    http_keep_alive_seconds: int = Field(5, description="An idle kept-alive HTTP connection is closed after this.")
    worker_heartbeat_seconds: float = Field(10.0, description="How often a worker records that it is alive.")
    worker_stale_seconds: float = Field(
        30.0, description="A worker whose last heartbeat is older counts as gone for /readyz."
    )
    ready_worker_queues: str = Field(
        "train,inference", description="Queues /readyz needs a live worker for (comma-separated; empty: none)."
    )
    db_idle_in_transaction_seconds: float = Field(
        60.0, description="PostgreSQL ends a session idle inside a transaction this long (a frozen process's row locks)."
    )
    # Graders (issue 15): the python grader's sandbox.
    grader_sandbox: Literal["auto", "bwrap", "rlimit"] = Field(
        "auto",
        description="How python graders are isolated: bwrap (bubblewrap namespaces + rlimits), rlimit "
        "(a fresh process with rlimits, empty env and a temp cwd only) or auto (bwrap when it works).",
    )
    grader_timeout_seconds: float = Field(10.0, description="Wall-clock limit of one python grader call.")
    grader_cpu_seconds: int = Field(10, description="CPU-time rlimit of one python grader call.")
    grader_memory_mb: int = Field(512, description="Address-space rlimit of one python grader call, in MiB.")
    grader_max_processes: int = Field(16, description="Process-count rlimit inside a python grader's sandbox.")
    # Graders (issue 15): the model grader's judges.
    judge_url_allowlist: str = Field(
        "", description="Comma-separated base URLs of OpenAI-compatible APIs a `model` grader may call "
        "(compared exactly, without a trailing slash); empty = only models this service serves."
    )
    judge_api_key: str = Field("", description="Bearer token sent to allowlisted judge URLs (empty: none).")
    judge_timeout_seconds: float = Field(60.0, description="How long one judge request may take.")
    judge_concurrency: int = Field(8, ge=1, description="Judge requests a grader sends at once to a URL judge.")
    # Issue 17 (MLOps): webhooks and tracking integrations.
    webhook_allowed_hosts: str = Field(
        "", description="Comma-separated hosts, addresses or networks (CIDR) webhooks may reach even though "
        "they are private or loopback (SSRF guard); empty = public addresses only."
    )
    webhook_poll_seconds: float = Field(0.5, description="How often the API's deliverer sends due webhooks (0 = off).")
    webhook_timeout_seconds: float = Field(10.0, description="How long one webhook POST may take.")
    webhook_claim_seconds: float = Field(
        30.0, description="A delivery lease: a deliverer that died mid-send is retried by another after this."
    )
    webhook_max_attempts: int = Field(12, description="Attempts before a webhook event is given up.")
    webhook_backoff_seconds: float = Field(1.0, description="First retry delay; doubles each attempt.")
    webhook_backoff_max_seconds: float = Field(600.0, description="Longest retry delay.")
    mlflow_tracking_uri_allowlist: str = Field(
        "", description="Comma-separated MLflow tracking URIs job specs may export to; empty = MLflow export off."
    )
    mlflow_request_timeout_seconds: int = Field(10, description="How long one MLflow request may take.")
    wandb_mode: Literal["online", "offline"] = Field(
        "online", description="W&B mode; offline writes the run folder into the job's artifacts (wandb sync later)."
    )
    wandb_base_url: str | None = Field(None, description="W&B host (default W&B's cloud).")
    wandb_api_key: SecretStr | None = Field(None, description="W&B API key used for every job's run.")
    wandb_entity: str | None = Field(None, description="W&B entity (team or user) runs are logged under.")
    tracker_backoff_seconds: float = Field(2.0, description="First retry delay of a failing tracker; doubles each failure.")
    # Distributed training (issue 14).
    max_devices: int = Field(8, description="Largest resources.devices a job may ask for.")
    max_nodes: int = Field(
        1, description="Largest resources.nodes a job may ask for; above 1, train workers need AMFT_RAY_ADDRESS."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster (host:port of its head's GCS) that runs multi-node jobs with Ray Train; "
        "unset: this worker declines jobs with resources.nodes > 1.",
    )
    worker_devices: int = Field(
        1, description="Devices this train worker can give one job (GPUs, or CPU processes); larger jobs are declined."
    )
    collective_timeout_seconds: float = Field(
        120.0, description="A collective that waits longer (a rank died or hung) fails the whole group."
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'amft.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.home / "artifacts").resolve()

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or self.home / "cache").resolve()

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.home / "models").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings. Tests call `get_settings.cache_clear()` after changing env."""
    return Settings()
