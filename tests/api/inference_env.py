"""A real inference worker subprocess (`celery ... -Q inference -P threads -c 8`) for the
API tests of /generate, /v1/* and evaluations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from service.settings import Settings
from tests.conftest import ROOT, settings_env


class InferenceWorker:
    """Start with `with InferenceWorker(settings, log_dir):`; stopped (SIGTERM) on exit."""

    def __init__(self, settings: Settings, log_dir: Path, concurrency: int = 8):
        self.settings, self.log_path, self.concurrency = settings, log_dir / "inference-worker.log", concurrency

    def __enter__(self) -> InferenceWorker:
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1", "AMFT_INFERENCE_TORCH_THREADS": "1"}
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "inference",
             "-P", "threads", "-c", str(self.concurrency), "-n", f"inf-{uuid.uuid4().hex[:6]}@%h",
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def __exit__(self, *_exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()

    def logs(self) -> str:
        return self.log_path.read_text()[-4000:]
