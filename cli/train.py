"""`amft train SPEC.yaml --out DIR`: run the trainer locally, without the service.

Metrics go to DIR/metrics.jsonl (one JSON object per step) and a live progress line shows
step/total, mu, reward and ETA. `--resume` continues from DIR's newest valid checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="Train locally from a job spec file (YAML or JSON).")
    parser.add_argument("spec", type=Path, help="Job spec file.")
    parser.add_argument("--out", type=Path, required=True, help="Output folder (checkpoints, metrics.jsonl).")
    parser.add_argument("--resume", action="store_true", help="Continue from the newest valid checkpoint in --out.")
    parser.add_argument("--quiet", action="store_true", help="No progress line.")
    parser.set_defaults(run=run)


def load_spec(path: Path):
    """Parse and validate a spec file; exits with one line per problem when it is invalid."""
    import yaml
    from pydantic import ValidationError

    from service.specs import JobSpec, spec_error_lines

    try:
        raw = yaml.safe_load(path.read_text())
        return JobSpec.model_validate(raw or {})
    except (OSError, yaml.YAMLError) as error:
        sys.exit(f"amft train: cannot read {path}: {error}")
    except ValidationError as error:
        sys.exit("amft train: invalid spec:\n" + "\n".join(f"  {line}" for line in spec_error_lines(error)))


def keep_metrics_through(metrics_path: Path, last_step: int) -> None:
    """Drop the points after `last_step` from metrics.jsonl (all of them for a fresh run).

    A resume replays the steps after its checkpoint; without this their first, crashed
    attempt would stay in the file and every replayed step would appear twice. Rewritten
    through a temporary file and a rename, so a crash here leaves the old file whole."""
    if not metrics_path.exists():
        return
    kept = [line for line in metrics_path.read_text().splitlines() if _step_of(line, last_step + 1) <= last_step]
    partial = metrics_path.with_suffix(".jsonl.tmp")
    partial.write_text("".join(line + "\n" for line in kept))
    partial.replace(metrics_path)


def _step_of(line: str, unreadable: int) -> int:
    """The step of one metrics line; `unreadable` for a line a crash cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return unreadable


class ProgressPrinter:
    """Appends each step's metrics to metrics.jsonl and redraws one status line."""

    def __init__(self, metrics_path: Path, total_steps: int, quiet: bool):
        self.metrics_path, self.total, self.quiet = metrics_path, total_steps, quiet
        self.started = time.monotonic()
        self.first_step: int | None = None

    def __call__(self, point: dict) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        if self.quiet:
            return
        step = int(point["step"])
        self.first_step = self.first_step or step
        done = step - self.first_step + 1
        eta = (time.monotonic() - self.started) / done * (self.total - step)
        reward = point.get("reward_mean")
        reward_text = f"{reward:.3f}" if reward is not None else "  -  "
        sys.stdout.write(
            f"\rstep {step}/{self.total}  mu {point['mu']:.3f}  reward {reward_text}"
            f"  {point['phase']:<6}  ETA {eta:5.0f}s "
        )
        sys.stdout.flush()


def run(args) -> int:
    spec = load_spec(args.spec)
    from transformers.utils import logging as transformers_logging

    from workers.trainer.checkpoint import checkpoint_step, latest_valid_checkpoint
    from workers.trainer.hooks import TrainerHooks
    from workers.trainer.loop import train

    transformers_logging.disable_progress_bar()  # it would break the one-line progress display
    args.out.mkdir(parents=True, exist_ok=True)
    resume_from = latest_valid_checkpoint(args.out) if args.resume else None
    keep_metrics_through(args.out / "metrics.jsonl", checkpoint_step(resume_from) if resume_from else 0)
    printer = ProgressPrinter(args.out / "metrics.jsonl", spec.training.total_steps, args.quiet)
    result = train(spec, args.out, TrainerHooks(on_metrics=printer), resume_from=resume_from)
    print(f"\n{result.status} at step {result.last_step}; checkpoint {result.last_checkpoint}")
    return 0
