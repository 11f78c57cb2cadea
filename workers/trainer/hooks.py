"""How a caller (the CLI or the Celery task) watches and steers a training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

Metrics = dict[str, float | int | str]


def _never() -> bool:
    return False


def _ignore(*_args: object) -> None:
    return None


@dataclass
class TrainerHooks:
    """Callbacks the loop calls; each may raise to abort the run (e.g. a fenced worker).

    on_metrics(point): after every step, with the step's metrics (see loop.py for names).
    on_checkpoint(step, path): after a checkpoint folder was atomically renamed into place.
    should_stop(): checked once per step; True makes the loop save a checkpoint and return.
    on_event(kind, message): something the user should see that is not a metric (e.g. a
        grader failed on a batch); recorded as a job event.
    on_samples(step, rows): at eval steps, a few sampled completions with their rewards
        (workers.trainer.evaluation.sample_rows), for the experiment trackers.
    judge: how `model` graders reach their judge (workers/judges.py: Judge); None = a
        Judge of the process's settings with no tenant (URL judges only).
    """

    on_metrics: Callable[[Metrics], None] = field(default=_ignore)
    on_checkpoint: Callable[[int, Path], None] = field(default=_ignore)
    should_stop: Callable[[], bool] = field(default=_never)
    on_event: Callable[[str, str], None] = field(default=_ignore)
    on_samples: Callable[[int, list[dict]], None] = field(default=_ignore)
    judge: object | None = None


@dataclass
class TrainResult:
    """How a run ended: `completed` (all steps done) or `stopped` (should_stop said so)."""

    status: Literal["completed", "stopped"]
    last_step: int
    last_checkpoint: Path | None
