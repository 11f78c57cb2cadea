"""The worker processes of `amft serve`, supervised (issue 13, item 12).

- Each worker runs in its own session (a terminal's Ctrl-C reaches only `amft serve`,
  which then stops the workers in order) and dies with `amft serve`: it is started through
  `workers.parent_death`, which sets PR_SET_PDEATHSIG=SIGTERM, so a `kill -9` of `amft
  serve` makes each worker do a warm shutdown (a running job checkpoints and re-queues)
  instead of living on and doubling the next `amft serve`. Its pool children die with it
  (workers.worker_hooks).
- A worker that exits is logged and restarted after a backoff: 1 s, doubling per exit
  up to 60 s, back to 1 s once a worker has run for a minute.

PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so one thread
starts, watches, restarts and finally stops every worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
STOP_SECONDS = 60  # how long a worker may take to checkpoint before it is killed
FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_SECONDS = 1.0, 60.0, 60.0
POLL_SECONDS = 0.5


@dataclass
class Worker:
    """One supervised worker: its name, Celery arguments and current process."""

    name: str
    celery_args: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Starts the workers, restarts any that exits, and stops them all on `stop()`."""

    def __init__(self, workers: list[tuple[str, list[str]]], log_dir: Path, say: Callable[[str], None]):
        self.workers = [Worker(name, args) for name, args in workers]
        self.log_dir, self.say = log_dir, say
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amft-supervisor", daemon=True)

    def start(self) -> Supervisor:
        """Start every worker (returns once they are spawned) and begin watching them."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._started.wait()
        return self

    def stop(self) -> None:
        """SIGTERM each worker (warm shutdown: running jobs checkpoint and re-queue), then wait."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            for worker in self.workers:
                self._spawn(worker)
            self._started.set()
            while not self._stop.wait(POLL_SECONDS):
                for worker in self.workers:
                    self._watch(worker)
        finally:
            self._started.set()
            _stop_all([w.proc for w in self.workers if w.proc is not None])

    def _watch(self, worker: Worker) -> None:
        now = time.monotonic()
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                worker.restarts += 1
                self._spawn(worker)
            return
        code = worker.proc.poll()
        if code is None:
            return
        if now - worker.started >= HEALTHY_SECONDS:
            worker.backoff = FIRST_BACKOFF
        worker.restart_at = now + worker.backoff
        self.say(f"{worker.name} worker (pid {worker.proc.pid}) exited with {_describe(code)}; "
                 f"restarting in {worker.backoff:.0f} s")
        worker.backoff = min(worker.backoff * 2, MAX_BACKOFF)

    def _spawn(self, worker: Worker) -> None:
        log_path = self.log_dir / f"worker-{worker.name}.log"
        command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", *worker.celery_args,
                   "-n", f"{worker.name}-{os.getpid()}-{worker.restarts}@%h", "--loglevel", "INFO",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
        guarded = [sys.executable, "-m", "workers.parent_death", str(os.getpid()), "SIGTERM", "--", *command]
        with log_path.open("a") as log:
            worker.proc = subprocess.Popen(guarded, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        worker.started, worker.restart_at = time.monotonic(), None
        self.say(f"{worker.name} worker pid {worker.proc.pid}, log {log_path}")


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its job's lease expires; the reaper re-queues it
            proc.wait()
