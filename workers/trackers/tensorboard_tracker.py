"""TensorBoard: event files under `<job>/tensorboard/` (GET /jobs/{id}/artifacts/tensorboard)."""

from __future__ import annotations

import json

from workers.trackers.base import TrackerContext, markdown_table

TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker:
    """Scalars per step, the spec as text, sampled completions as a markdown text summary;
    written by torch's SummaryWriter."""

    def __init__(self, context: TrackerContext):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(context.job_dir / TENSORBOARD_DIR))
        self.writer.add_text("spec", "```json\n" + json.dumps(context.spec, indent=1) + "\n```", 0)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_samples(self, step: int, rows: list[dict]) -> None:
        self.writer.add_text("samples", markdown_table(rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
