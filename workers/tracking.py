"""Tracking export (issue 17): the spec's `integrations` receive every step's metrics and
the spec as parameters, through the trackers' own client libraries.

A failing tracker never fails the job: the failure is recorded as a job event
(`tracker_error`), the points it missed are kept (bounded), and it is retried with
exponential backoff on later steps. Only TensorBoard is implemented (event files under
`<job>/tensorboard/`, downloadable from GET /jobs/{id}/artifacts/tensorboard).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Protocol

log = logging.getLogger(__name__)
MAX_PENDING = 10_000  # points kept for a tracker that is down
TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class TensorBoardTracker:
    """Scalars per step and the spec as text, written by torch's SummaryWriter."""

    def __init__(self, job_dir: Path, spec: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(job_dir / TENSORBOARD_DIR))
        self.writer.add_text("spec", "```json\n" + json.dumps(spec, indent=1) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


TRACKERS: dict[str, Callable[[Path, dict], Tracker]] = {"tensorboard": TensorBoardTracker}


class Export:
    """All of one job's trackers, each behind its own retry state."""

    def __init__(self, spec: dict, job_dir: Path, note: Callable[[str, str], None], backoff_seconds: float = 2.0):
        self.spec, self.job_dir, self.note, self.backoff = spec, job_dir, note, backoff_seconds
        self.slots = [_Slot(item["kind"]) for item in spec.get("integrations") or []]

    def on_metrics(self, point: dict) -> None:
        """Queue the step's numeric metrics for every tracker and send what is due."""
        step = int(point["step"])
        scalars = {k: float(v) for k, v in point.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for slot in self.slots:
            slot.pending.append((step, scalars))
            del slot.pending[:-MAX_PENDING]
            self._flush(slot)

    def close(self) -> None:
        for slot in self.slots:
            self._flush(slot, force=True)
            if slot.tracker is not None:
                try:
                    slot.tracker.close()
                except Exception:  # noqa: BLE001 - a tracker never fails the job
                    log.warning("closing tracker %s failed", slot.kind, exc_info=True)

    def _flush(self, slot: _Slot, force: bool = False) -> None:
        if not force and time.monotonic() < slot.retry_at:
            return
        try:
            if slot.tracker is None:
                slot.tracker = TRACKERS[slot.kind](self.job_dir, self.spec)
            while slot.pending:
                step, scalars = slot.pending[0]
                slot.tracker.log(step, scalars)
                slot.pending.pop(0)
            slot.failures = 0
        except Exception as error:  # noqa: BLE001 - record, back off, retry later
            slot.failures += 1
            delay = min(self.backoff * 2 ** (slot.failures - 1), 300.0)
            slot.retry_at = time.monotonic() + delay
            message = f"{slot.kind} export failed ({type(error).__name__}: {error}); retrying in {delay:g} s"
            try:
                self.note("tracker_error", message[:2000])
            except Exception:  # noqa: BLE001 - the event is best effort too
                log.warning(message)


class _Slot:
    def __init__(self, kind: str):
        self.kind = kind
        self.tracker: Tracker | None = None
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.failures = 0
        self.retry_at = 0.0
