"""The common checker of issue 6, applied after every fault case:

- the job ends in the stated status;
- every step's metrics exist exactly once (steps 1..N, no gap, no duplicate);
- no row was written by a fenced attempt (events, checkpoint rows, and the worker's own
  journal of committed writes, against the time the next attempt claimed the job);
- the mu curve equals an uninterrupted run with the same seed (1e-6 on CPU);
- at most `save_every` steps were recomputed by each resume.

The uninterrupted reference is `workers.trainer.loop.train` run directly on the same spec,
in a subprocess (the same environment as a worker), once per spec per test session.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from service.db import get_database
from service.models import Checkpoint, Job, JobEvent, MetricPoint

ROOT = Path(__file__).resolve().parents[2]
MU_TOLERANCE = 1e-6
_REFERENCES: dict[str, dict[int, float]] = {}

_REFERENCE_SCRIPT = """
import json, sys
from pathlib import Path
from service.specs import JobSpec
from workers.trainer.hooks import TrainerHooks
from workers.trainer.loop import train
points = []
spec = JobSpec.model_validate(json.loads(sys.argv[1]))
train(spec, Path(sys.argv[2]), TrainerHooks(on_metrics=lambda p: points.append([p["step"], p["mu"]])))
print("REFERENCE " + json.dumps(points))
"""


def reference_mu(spec: dict) -> dict[int, float]:
    """step -> mu of an uninterrupted run of `spec` (computed once per session)."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    if key not in _REFERENCES:
        with tempfile.TemporaryDirectory(prefix="amft-ref-") as home:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AMFT_")}
            env.update(AMFT_HOME=home, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # as the fault workers
            done = subprocess.run([sys.executable, "-c", _REFERENCE_SCRIPT, json.dumps(spec), str(Path(home) / "out")],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        line = next((l for l in done.stdout.splitlines() if l.startswith("REFERENCE ")), None)
        assert done.returncode == 0 and line, f"reference run failed:\n{done.stderr[-3000:]}"
        _REFERENCES[key] = {int(step): float(mu) for step, mu in json.loads(line.removeprefix("REFERENCE "))}
    return _REFERENCES[key]


def read_journal(fault_dir: Path, job_id: str) -> list[dict]:
    path = Path(fault_dir) / f"journal-{job_id}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@dataclass
class Outcome:
    """What the checker saw, for assertions and the report line."""

    status: str
    attempts: int
    steps: list[int]
    resumed_from: dict[int, int] = field(default_factory=dict)  # attempt -> resume step
    recomputed: dict[int, int] = field(default_factory=dict)  # attempt -> steps redone
    fenced_refused: int = 0  # writes a fenced attempt tried and the database refused
    error: dict | None = None
    events: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        resumes = ", ".join(f"attempt {a} from step {s}" for a, s in sorted(self.resumed_from.items())) or "none"
        return (f"status {self.status} on attempt {self.attempts}; steps {self.steps[:1]}..{self.steps[-1:]} "
                f"({len(self.steps)} rows); resumes: {resumes}; recomputed {self.recomputed or 0}; "
                f"fenced writes refused {self.fenced_refused}")


def check_job(
    db_url: str,
    job_id: str,
    *,
    status: str,
    spec: dict,
    fault_dir: Path,
    last_step: int | None = None,
    max_recompute: int | None = None,
) -> Outcome:
    """Assert the five properties; returns what was seen. `last_step` defaults to
    total_steps for a succeeded job and to the job's progress otherwise."""
    db = get_database(db_url)
    with db.transaction() as session:
        job = session.get(Job, job_id)
        points = session.execute(
            select(MetricPoint.step, MetricPoint.values).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step)
        ).all()
        events = session.execute(
            select(JobEvent.id, JobEvent.kind, JobEvent.attempt, JobEvent.message, JobEvent.created_at)
            .where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        checkpoints = session.execute(
            select(Checkpoint.step, Checkpoint.attempt, Checkpoint.created_at).where(Checkpoint.job_id == job_id)
        ).all()
    event_list = [{"id": e.id, "kind": e.kind, "attempt": e.attempt, "message": e.message} for e in events]
    context = f"job {job_id}: events {event_list}"

    # 1. the status
    assert job.status == status, f"ended {job.status} ({job.error_code}: {job.error_message}), expected {status}; {context}"

    # 2. every step exactly once (the primary key forbids duplicates; check there is no gap)
    steps = [step for step, _ in points]
    expected_last = last_step if last_step is not None else (job.total_steps if status == "succeeded" else job.current_step)
    assert steps == list(range(1, expected_last + 1)), f"steps {steps} != 1..{expected_last}; {context}"
    assert all(values["step"] == step for step, values in points)

    # 3. no row written by a fenced attempt
    started = {e.attempt: e for e in events if e.kind == "started"}
    for attempt, start in started.items():
        earlier = [a for a in started if a < attempt]
        for old in earlier:
            late = [e for e in events if e.attempt == old and e.id > start.id]
            assert not late, f"attempt {old} wrote events after attempt {attempt} started: {late}; {context}"
            late_ckpt = [c for c in checkpoints if c.attempt == old and c.created_at > start.created_at]
            assert not late_ckpt, f"attempt {old} recorded checkpoints after attempt {attempt} started: {late_ckpt}"
    journal = read_journal(fault_dir, job_id)
    for entry in journal:
        successor = started.get(entry["attempt"] + 1)
        if entry["result"] == "ok" and successor is not None:
            assert entry["t"] <= successor.created_at.timestamp() + 0.05, (
                f"attempt {entry['attempt']} committed {entry['what']} of step {entry['step']} after attempt "
                f"{entry['attempt'] + 1} claimed the job; {context}")
    fenced_refused = sum(1 for entry in journal if entry["result"] == "fenced")

    # 4. the mu curve of an uninterrupted run
    reference = reference_mu(spec)
    for step, values in points:
        assert abs(values["mu"] - reference[step]) <= MU_TOLERANCE, (
            f"step {step}: mu {values['mu']} != uninterrupted {reference[step]}")

    # 5. at most save_every steps recomputed per resume
    save_every = spec["training"]["save_every"]
    limit = save_every if max_recompute is None else max_recompute
    resumed_from, recomputed = {}, {}
    for attempt, start in started.items():
        match = re.search(r"resuming from step (\d+)", start.message)
        resumed_from[attempt] = int(match.group(1)) if match else 0
    for attempt in sorted(resumed_from):
        done_before = [e["step"] for e in journal if e["attempt"] < attempt and e["what"] == "metrics" and e["result"] == "ok"]
        if attempt > 1 and done_before:
            # Steps this attempt recomputes: those after where it starts, up to the furthest step done before.
            restart = _actual_start(journal, attempt, resumed_from[attempt])
            recomputed[attempt] = max(0, max(done_before) - restart)
            assert recomputed[attempt] <= limit, f"attempt {attempt} recomputed {recomputed[attempt]} > {limit} steps"
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return Outcome(job.status, job.attempt, steps, resumed_from, recomputed, fenced_refused, error, event_list)


def _actual_start(journal: list[dict], attempt: int, claimed: int) -> int:
    # The first step an attempt computed, minus one (differs from the claim's resume step
    # when the latest checkpoint was unusable and an older one was used).
    own = [e["step"] for e in journal if e["attempt"] == attempt and e["what"] == "metrics"]
    return min(own) - 1 if own else claimed
