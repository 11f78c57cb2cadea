"""What every tracker gets and implements (workers.tracking registers one class per kind)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.settings import Settings

SAMPLE_COLUMNS = ("split", "prompt", "completion", "reward", "correct")
CELL_CHARS = 1000  # a sample's prompt or completion is cut to this many characters


@dataclass(frozen=True)
class TrackerContext:
    """One job's view for a tracker: where its artifacts go, its spec, its integration entry."""

    job_id: str
    job_dir: Path
    spec: dict
    config: dict  # this tracker's entry of spec["integrations"]
    settings: Settings


class Tracker(Protocol):
    """Receives the spec at construction, then every step's metrics and, every eval_every
    steps, sampled completions (rows of SAMPLE_COLUMNS). Any method may raise: the caller
    (workers.tracking.Export) records the failure and retries later."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_samples(self, step: int, rows: list[dict]) -> None: ...
    def close(self) -> None: ...


def flat_params(spec: dict, prefix: str = "") -> dict[str, str]:
    """The spec as flat `a.b.c -> value` strings (lists as JSON), for trackers' parameters."""
    flat: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def columns(rows: list[dict]) -> dict[str, list]:
    """Rows as a column table {name: [values]} in SAMPLE_COLUMNS order."""
    return {name: [row[name] for row in rows] for name in SAMPLE_COLUMNS}


def markdown_table(rows: list[dict]) -> str:
    """Rows as a markdown table (TensorBoard renders text summaries as markdown)."""
    def cell(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[name]) for name in SAMPLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
