"""Tracking export (issue 17): the spec's `integrations` receive every step's metrics, the
spec as parameters and, every eval_every steps, a small table of sampled completions with
their rewards, through the trackers' own client libraries (workers/trackers/).

One class per kind in TRACKERS, chosen once per integration when the job starts. A
failing tracker never fails the job: the failure is recorded as a job event
(`tracker_error`, naming the tracker), what it missed is kept (bounded) and it is retried
with exponential backoff on later steps, and once more when the job ends.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

from service.redact import redact_paths
from service.settings import Settings, get_settings
from workers.trackers.base import Tracker, TrackerContext
from workers.trackers.mlflow_tracker import MlflowTracker
from workers.trackers.tensorboard_tracker import TensorBoardTracker
from workers.trackers.wandb_tracker import WandbTracker

log = logging.getLogger(__name__)
MAX_PENDING = 10_000  # calls kept for a tracker that is down
MAX_BACKOFF_SECONDS = 300.0
TRACKERS: dict[str, Callable[[TrackerContext], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}

Call = Callable[[Tracker], None]


class Export:
    """All of one job's trackers, each behind its own queue and retry state."""

    def __init__(self, spec: dict, job_dir: Path, note: Callable[[str, str], None], job_id: str = "",
                 settings: Settings | None = None):
        settings = settings or get_settings()
        self.note, self.settings, self.backoff = note, settings, settings.tracker_backoff_seconds
        job_id = job_id or job_dir.name
        self.slots = [_Slot(TrackerContext(job_id, job_dir, spec, dict(item), settings))
                      for item in spec.get("integrations") or []]

    def on_metrics(self, point: dict) -> None:
        """Queue the step's finite numeric metrics for every tracker and send what is due."""
        step = int(point["step"])
        scalars = {k: float(v) for k, v in point.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self._send(lambda tracker: tracker.log_metrics(step, scalars))

    def on_samples(self, step: int, rows: list[dict]) -> None:
        """Queue a table of sampled completions (workers.trainer.evaluation.sample_rows)."""
        self._send(lambda tracker: tracker.log_samples(step, rows))

    def close(self) -> None:
        """Last try for whatever is pending, then close every tracker that opened."""
        for slot in self.slots:
            self._flush(slot, force=True)
            if slot.tracker is not None:
                try:
                    slot.tracker.close()
                except Exception as error:  # noqa: BLE001 - a tracker never fails the job
                    self._record(slot, f"closing failed ({type(error).__name__}: {error})")

    def _send(self, call: Call) -> None:
        for slot in self.slots:
            slot.pending.append(call)
            del slot.pending[:-MAX_PENDING]
            self._flush(slot)

    def _flush(self, slot: _Slot, force: bool = False) -> None:
        # Nothing to send opens nothing: under torchrun the worker's own Export sees no
        # steps (rank 0's does), and must not open a second run of the job at close.
        if not slot.pending or (not force and time.monotonic() < slot.retry_at):
            return
        try:
            if slot.tracker is None:
                slot.tracker = TRACKERS[slot.kind](slot.context)
            while slot.pending:
                slot.pending[0](slot.tracker)
                slot.pending.pop(0)
            slot.failures = 0
        except Exception as error:  # noqa: BLE001 - record, back off, retry later
            slot.failures += 1
            delay = min(self.backoff * 2 ** (slot.failures - 1), MAX_BACKOFF_SECONDS)
            slot.retry_at = time.monotonic() + delay
            self._record(slot, f"export failed ({type(error).__name__}: {error}); retrying in {delay:g} s")

    def _record(self, slot: _Slot, problem: str) -> None:
        message = redact_paths(f"{slot.kind} {problem}", self.settings)  # the tenant reads it
        try:
            self.note("tracker_error", message[:2000])
        except Exception:  # noqa: BLE001 - the event is best effort too
            log.warning(message)


class _Slot:
    def __init__(self, context: TrackerContext):
        self.context = context
        self.kind = context.config["kind"]
        self.tracker: Tracker | None = None
        self.pending: list[Call] = []
        self.failures = 0
        self.retry_at = 0.0
