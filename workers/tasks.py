"""Celery tasks: thin. Each takes ids only and calls one function."""

from __future__ import annotations

from workers.celery_app import TRAIN_TASK, app


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    """Run (or resume) training job `job_id`; returns what happened, for the worker log."""
    from workers.train_job import run_train_job  # imports torch: only in worker processes

    return run_train_job(job_id)
