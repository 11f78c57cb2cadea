"""Faults of a job's storage and requests (issue 6, cases 8-11): a full disk while a
checkpoint is written, a corrupted latest checkpoint, cancel in every state, concurrent
duplicate POST /jobs with one Idempotency-Key."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.db import get_database
from service.models import Job
from workers.trainer.checkpoint import verify_checkpoint
from tests.faults.conftest import SPEC20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _mount_tmpfs(path: Path, size: str) -> bool:
    """A size-limited tmpfs at `path` (needs root and mount rights); False if refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return done.returncode == 0


def test_8_disk_full_while_writing_a_checkpoint(env_factory, tmp_path, record):
    jobs_dir = tmp_path / "home" / "artifacts" / "jobs"
    # One checkpoint of this spec is ~12 MB (weights 4 MB, optimizer 8 MB): an 18 MB disk
    # holds the step-5 checkpoint and fills up while step 10's optimizer file is written.
    mounted = _mount_tmpfs(jobs_dir, "18m")
    try:
        fenv = env_factory()
        fenv.start_api()
        fenv.workers.start(fault="" if mounted else "enospc:10")
        job_id = fenv.submit()
        job = fenv.wait_status(job_id, ("succeeded", "failed"))
        outcome = fenv.check(job_id, "failed", last_step=10)
        assert job["error"]["code"] == "trainer_error"
        assert "could not write checkpoint for step 10" in job["error"]["message"]
        assert "No space left on device" in job["error"]["message"]
        checkpoints = jobs_dir / job_id / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000005"], "partial checkpoint left behind"
        verify_checkpoint(checkpoints / "step-000005")  # the previous checkpoint is intact
        with fenv.client() as client:
            assert [c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]] == [5]
        how = "a real 18 MB tmpfs" if mounted else "injected ENOSPC (tmpfs mount refused here)"
        record("8", f"artifacts on {how}; the step-10 checkpoint does not fit",
               "partial checkpoint removed, previous one intact, job fails or retries with a clear error",
               f"{outcome.summary()}; error {job['error']['message']!r}; only step-000005 on disk, verified")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(jobs_dir)], capture_output=True)


def test_9_corrupted_latest_checkpoint_falls_back_to_the_previous(fenv, record):
    first = fenv.workers.start(fault="pause:12@1")
    job_id = fenv.submit()
    fenv.wait_paused(job_id, 1, 12)
    fenv.workers.kill(first)
    latest = fenv.settings.resolved_artifacts_dir / "jobs" / job_id / "checkpoints" / "step-000010"
    weights = latest / "model.safetensors"
    with weights.open("r+b") as handle:  # truncated weights, as a crash mid-copy leaves them
        handle.truncate(weights.stat().st_size // 2)
    fenv.workers.start()
    fenv.wait_status(job_id, ("succeeded", "failed"))
    # Falling back one checkpoint recomputes up to 2 x save_every steps (here 12 - 5 = 7).
    outcome = fenv.check(job_id, "succeeded", max_recompute=2 * SPEC20["training"]["save_every"])
    assert outcome.attempts == 2
    fallback = [e for e in outcome.events if e["kind"] == "checkpoint_unusable"]
    assert fallback and "step-000010" in fallback[0]["message"] and "step 5" in fallback[0]["message"]
    assert outcome.recomputed == {2: 7}
    verify_checkpoint(latest)  # rewritten by the resumed attempt
    record("9", "SIGKILL at step 12, truncate the step-10 checkpoint's weights, start a worker",
           "resume detects it by checksum and falls back to the previous checkpoint (step 5)",
           f"{outcome.summary()}; event: {fallback[0]['message']!r}")


def test_10_cancel_queued_running_and_finished(fenv, record):
    with fenv.client() as client:
        # Queued (no worker yet): cancelled at once.
        queued = fenv.submit()
        response = client.post(f"/jobs/{queued}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        # Running: cancelled at step 6 ends within one step, with a checkpoint.
        fenv.workers.start(fault="pause:6@1")
        running = fenv.submit()
        fenv.wait_paused(running, 1, 6)
        assert client.post(f"/jobs/{running}/cancel").json()["cancel_requested"] is True
        fenv.go()
        job = fenv.wait_status(running, ("cancelled", "succeeded", "failed"))
        outcome = fenv.check(running, "cancelled")
        last = outcome.steps[-1]
        assert last <= 7, f"stopped at step {last}, more than one step after the cancel at step 6"
        checkpoints = client.get(f"/jobs/{running}/checkpoints").json()["checkpoints"]
        assert checkpoints[-1]["step"] == last
        # Finished: 409, for a cancelled and for a succeeded job.
        for job_id in (queued, running):
            conflict = client.post(f"/jobs/{job_id}/cancel")
            assert conflict.status_code == 409 and "already ended" in conflict.json()["detail"]
        assert fenv.job(queued)["attempt"] == 0  # the queued one never ran
    record("10", "cancel a queued job; cancel a running job at step 6; cancel both again",
           "queued: cancelled at once; running: cancelled within one step with a checkpoint; finished: 409",
           f"queued -> cancelled (attempt 0); running -> {outcome.summary()}, checkpoint at {last}; "
           f"repeat cancels -> 409")


def test_11_concurrent_duplicate_posts_create_one_job(fenv, record):
    barrier = threading.Barrier(16)
    answers: list[tuple[int, str, str | None]] = []

    def post() -> None:
        with fenv.client() as client:
            barrier.wait()
            response = client.post("/jobs", json=SPEC20, headers={"Idempotency-Key": "same-key-123"})
            answers.append((response.status_code, response.json().get("id"), response.headers.get("Idempotent-Replayed")))

    threads = [threading.Thread(target=post) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 16 and {code for code, _, _ in answers} == {201}
    assert len({job_id for _, job_id, _ in answers}) == 1
    assert sum(1 for _, _, replayed in answers if replayed != "true") == 1
    with get_database(fenv.db_url).transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    record("11", "16 concurrent POST /jobs with one Idempotency-Key (threads released by a barrier)",
           "exactly one job", "16 x 201 with the same id, 15 marked Idempotent-Replayed, 1 row in jobs")
