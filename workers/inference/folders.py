"""Where a cache key's weights live in the artifact store. Shared by the engine factory
(workers.inference.loader) and the vLLM pool (workers.inference.vllm_pool), so that neither
imports the other."""

from __future__ import annotations

from pathlib import Path

from service.lifecycle import job_dir
from service.settings import Settings
from workers.inference.types import InferenceError
from workers.trainer.checkpoint import CheckpointError, checkpoint_dir, verify_checkpoint
from workers.trainer.models import BASE_MODEL_FILE, _read_base_source


def checkpoint_folder(settings: Settings, job_id: str, step: int) -> Path:
    """The verified checkpoint folder inside the artifact store, or InferenceError(not_found)."""
    artifacts = settings.resolved_artifacts_dir
    folder = checkpoint_dir(job_dir(artifacts, job_id), step).resolve()
    if not folder.is_relative_to(artifacts) or not folder.is_dir():
        raise InferenceError("not_found", f"checkpoint step {step} of job {job_id} is not in the artifact store")
    try:
        verify_checkpoint(folder)
    except CheckpointError as error:
        raise InferenceError("not_found", f"checkpoint step {step} of job {job_id} is unusable: {error}") from None
    return folder


def lora_base_source(folder: Path) -> str | None:
    """The base model source of a LoRA checkpoint folder, None for full weights."""
    if not (folder / BASE_MODEL_FILE).is_file():
        return None
    return _read_base_source(folder)
