"""Deployment settings, read once from `AMFT_*` environment variables.

The defaults are the embedded mode: everything under one local folder (`AMFT_HOME`),
SQLite for the job store and a SQLite-backed Celery broker, so `amft serve` needs no
server. Production sets `AMFT_DATABASE_URL` and `AMFT_BROKER_URL` to PostgreSQL and Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
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
