"""Merged LoRA downloads (issue 17): peft's `merge_and_unload` of a LoRA checkpoint into
its base, written once as `<checkpoint>/merged/` and then served like any full folder.

The merge needs torch, so it runs on the inference worker (queue `inference`); the API
sends the task (ids only) and waits for its reply. This module imports no torch at the
top: the API process imports `MergeClient`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from service import downloads
from service.db import get_database
from service.errors import GatewayTimeout, ServiceError
from service.settings import Settings, get_settings
from workers.celery_app import app
from workers.inference.replies import reply_channel

MERGE_TASK = "amft.inference.merge_lora"


class MergeClient:
    """The API's side: make sure a LoRA checkpoint's merged folder exists."""

    def __init__(self, settings: Settings, celery_app=None):
        self.settings = settings
        self.app = celery_app or app
        self.replies = reply_channel(settings)

    def ensure(self, tenant_id: str, job_id: str, step: int) -> None:
        """Build the merged folder if missing (404 for another tenant's job, as always)."""
        db = get_database(self.settings.resolved_database_url)
        folder = downloads.checkpoint_folder(db, self.settings.resolved_artifacts_dir, tenant_id, job_id, step)
        if not (folder / "adapter_config.json").is_file() or (folder / downloads.MERGED_FOLDER / "config.json").is_file():
            return  # not LoRA (checkpoint_archive says so) or merged already
        task_id = uuid.uuid4().hex
        self.app.send_task(MERGE_TASK, args=[job_id, step], queue="inference", task_id=task_id)
        timeout = self.settings.inference_timeout_seconds
        reply = self.replies.wait(task_id, timeout)
        if reply is None:
            raise GatewayTimeout(f"the inference worker did not merge the adapter within {timeout:g} s; retry later")
        if "error" in reply:
            raise ServiceError(reply["error"])


@app.task(name=MERGE_TASK, bind=True, acks_late=False)
def merge_lora_task(self, job_id: str, step: int) -> None:
    """Merge one LoRA checkpoint and post the reply for the waiting API request."""
    settings = get_settings()
    try:
        merge_checkpoint(settings, job_id, step)
        reply: dict = {"ok": True}
    except Exception as error:  # noqa: BLE001 - the API shows the reason
        reply = {"error": f"could not merge the adapter: {type(error).__name__}: {error}"}
    reply_channel(settings).put(self.request.id, reply)


def merge_checkpoint(settings: Settings, job_id: str, step: int) -> Path:
    """Write `<checkpoint>/merged/` (safetensors, config, tokenizer) atomically."""
    from sqlalchemy import select

    from service.models import Checkpoint
    from workers.trainer.models import load_model_folder, save_model_folder

    db = get_database(settings.resolved_database_url)
    with db.read() as session:
        relative = session.scalar(select(Checkpoint.path).where(Checkpoint.job_id == job_id, Checkpoint.step == step))
    folder = settings.resolved_artifacts_dir / relative
    final = folder / downloads.MERGED_FOLDER
    if (final / "config.json").is_file():
        return final
    model, tokenizer = load_model_folder(folder, settings=settings)
    merged = model.merge_and_unload()
    temp = folder / f".merged-{uuid.uuid4().hex[:8]}"
    try:
        save_model_folder(merged, tokenizer, temp, base_source=None)
        os.replace(temp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final
