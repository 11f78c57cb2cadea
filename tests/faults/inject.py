"""The production Celery app plus test-only fault injection and a write journal.

Fault workers run `celery -A tests.faults.inject worker ...`: exactly the production app
(workers.celery_app) and train task, with `workers.train_job.Watch` wrapped so that

- every hook call (and every heartbeat the database refused) is journalled by the worker itself to
  `$AMFT_TEST_FAULT_DIR/journal-<job>.jsonl`: {attempt, step, what, result, t, pid}, where
  result is `ok` once the fenced write committed, `fenced` or `error` otherwise. The
  checker uses it to prove that no write of an attempt committed after it was fenced and
  to count recomputed steps;
- `$AMFT_TEST_FAULT` (comma-separated `action:step[@attempt]`) injects a fault right
  after the metrics of `step` were recorded:
    pause   write `paused-<job>-<attempt>-<step>` and wait until the file `go` exists
            (the test then kills, stops or signals the worker at a known step);
    die     SIGKILL this pool process (the worker's main process lives on);
    enospc  the checkpoint of `step` fails like a full disk: a partial file is written,
            then OSError(ENOSPC) (used only where a size-limited tmpfs cannot be mounted).
Nothing here is imported by the service itself.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import workers.train_job as train_job
from service.errors import Fenced
from workers.celery_app import app  # noqa: F401 - the app Celery loads

FAULT_DIR = Path(os.environ.get("AMFT_TEST_FAULT_DIR", "/tmp"))


def _faults() -> list[tuple[str, int, int | None]]:
    faults = []
    for item in filter(None, os.environ.get("AMFT_TEST_FAULT", "").split(",")):
        action, _, where = item.partition(":")
        step, _, attempt = where.partition("@")
        faults.append((action, int(step), int(attempt) if attempt else None))
    return faults


def journal(job_id: str, attempt: int, step: int, what: str, result: str) -> None:
    line = json.dumps({"attempt": attempt, "step": step, "what": what, "result": result,
                       "t": time.time(), "pid": os.getpid()})
    with (FAULT_DIR / f"journal-{job_id}.jsonl").open("a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def _journalled(what: str, original):
    def wrapper(self, *args):
        step = args[0]["step"] if what == "metrics" else args[0]
        try:
            result = original(self, *args)
        except Fenced:
            journal(self.held.job_id, self.held.attempt, step, what, "fenced")
            raise
        except BaseException:
            journal(self.held.job_id, self.held.attempt, step, what, "error")
            raise
        journal(self.held.job_id, self.held.attempt, step, what, "ok")
        if what == "metrics":
            _inject(self, step)
        return result

    return wrapper


def _inject(watch, step: int) -> None:
    job_id, attempt = watch.held.job_id, watch.held.attempt
    for action, at, only in _faults():
        if at != step or (only is not None and only != attempt):
            continue
        if action == "pause":
            (FAULT_DIR / f"paused-{job_id}-{attempt}-{step}").touch()
            deadline = time.monotonic() + 300
            while not (FAULT_DIR / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        elif action == "die":
            os.kill(os.getpid(), signal.SIGKILL)


def _enospc_save_file(original):
    # Only for `enospc:<step>`: the optimizer file of that step's checkpoint fails half-way.
    steps = {at for action, at, _ in _faults() if action == "enospc"}

    def save_file(tensors, filename, *args, **kwargs):
        if any(f"step-{s:06d}" in str(filename) for s in steps):
            Path(filename).write_bytes(b"\0" * 4096)  # the partial write a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return original(tensors, filename, *args, **kwargs)

    return save_file


def _journalled_heartbeat(original):
    # The heartbeat thread is often the first of a zombie's writes after SIGCONT (issue 13:
    # the zombie test saw 0 refused writes when it won the race): journal its refusals too.
    def heartbeat(db, held):
        try:
            return original(db, held)
        except Fenced:
            journal(held.job_id, held.attempt, None, "heartbeat", "fenced")
            raise

    return heartbeat


train_job.lifecycle.heartbeat = _journalled_heartbeat(train_job.lifecycle.heartbeat)
train_job.Watch.on_metrics = _journalled("metrics", train_job.Watch.on_metrics)
train_job.Watch.on_checkpoint = _journalled("checkpoint", train_job.Watch.on_checkpoint)
if any(action == "enospc" for action, _, _ in _faults()):
    import workers.trainer.checkpoint as checkpoint

    checkpoint.save_file = _enospc_save_file(checkpoint.save_file)
