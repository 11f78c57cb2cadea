"""Shared by the inference tests: a real checkpoint from a short tiny training run, and a
job that owns it in the database (recorded through the real lifecycle functions)."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

from service.db import get_database
from service.lifecycle import claim, create_job, finish, job_dir, record_checkpoint
from service.settings import Settings
from service.specs import JobSpec

TINY_TRAINING = {"total_steps": 10, "warmup_steps": 2, "learning_rate": 1e-3, "sft_batch_size": 4,
                 "rl_prompts_per_step": 2, "num_generations": 4, "max_completion_tokens": 24, "save_every": 5}


def tiny_spec() -> JobSpec:
    return JobSpec.model_validate({"method": "amft", "model": "builtin:tiny", "training": TINY_TRAINING,
                                   "controller": {"meta_interval": 3}})


@lru_cache(maxsize=1)
def trained_run(root: str) -> Path:
    """Train the tiny model for 10 steps once per test session; its output folder."""
    from workers.trainer.loop import train

    out = Path(root) / "tiny-run"
    if not (out / "checkpoints").is_dir():
        train(tiny_spec(), out)
    return out


def job_with_checkpoints(settings: Settings, tenant_id: str, run_dir: Path, steps=(5, 10)) -> str:
    """A succeeded job for `tenant_id` whose checkpoints are copies of `run_dir`'s."""
    db = get_database(settings.resolved_database_url)
    job, _ = create_job(db, tenant_id, tiny_spec(), None, lambda _id: None, 3)
    held = claim(db, job.id, "test", 60)
    target = job_dir(settings.resolved_artifacts_dir, job.id)
    for step in steps:
        relative = f"checkpoints/step-{step:06d}"
        shutil.copytree(run_dir / relative, target / relative)
        record_checkpoint(db, held, step, str((target / relative).relative_to(settings.resolved_artifacts_dir)))
    finish(db, held, cancelled=False)
    return job.id


def job_without_checkpoint(settings: Settings, tenant_id: str) -> str:
    db = get_database(settings.resolved_database_url)
    job, _ = create_job(db, tenant_id, tiny_spec(), None, lambda _id: None, 3)
    return job.id
