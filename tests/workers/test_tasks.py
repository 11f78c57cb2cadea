"""End to end on production-shaped services: the API (uvicorn), PostgreSQL, Redis and real
Celery worker subprocesses training builtin:tiny with the real trainer."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_SPEC, wait_for

# Generous bounds: the machine is shared and a training step's time varies with its load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def submit(client, spec=TINY_SPEC) -> str:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_status(client, job_id: str, statuses: tuple[str, ...], timeout: float = 240) -> dict:
    def done():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(done, timeout, what=f"job {job_id} to reach {statuses}")


def all_points(client, job_id: str) -> list[dict]:
    return client.get(f"/jobs/{job_id}/metrics", params={"limit": 10000}).json()["points"]


def test_job_trains_to_success_with_metrics_and_checkpoint(pg_api, pg_workers):
    pg_workers.start()
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client)
        job = wait_status(client, job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded", (job, pg_workers.logs())
        points = all_points(client, job_id)
        assert [p["step"] for p in points] == list(range(1, 11))
        mu_min, mu_max = 0.05, 0.95
        assert all(mu_min - 1e-9 <= p["mu"] <= mu_max + 1e-9 or p["mu"] == 1.0 for p in points)
        checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
        assert [c["step"] for c in checkpoints] == [5, 10]
        assert job["progress"] == {"step": 10, "total_steps": 10, "fraction": 1.0}


# Smaller batches keep the fault tests quick; a meta step at 6 and 12 still tests that the
# controller's state survives a resume.
FAULT_SPEC = {
    "method": "amft",
    "model": "builtin:tiny",
    "training": {"total_steps": 12, "warmup_steps": 2, "save_every": 4, "sft_batch_size": 2,
                 "rl_prompts_per_step": 2, "num_generations": 2, "max_completion_tokens": 12},
    # Windows of 2 end at steps 4, 8, 12, where checkpoints fall (a mid-window checkpoint would
    # replay too: it keeps the window's validation gradient; tests/workers/trainer/test_loop.py).
    "controller": {"meta_interval": 2},
}


def test_cancel_mid_run_ends_cancelled_with_a_checkpoint(pg_api, pg_workers):
    pg_workers.start()
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, FAULT_SPEC)
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 3, 120, what="step 3")
        assert client.post(f"/jobs/{job_id}/cancel").json()["cancel_requested"] is True
        job = wait_status(client, job_id, ("cancelled", "succeeded", "failed"))
        assert job["status"] == "cancelled", (job, pg_workers.logs())
        assert job["progress"]["step"] < 12
        steps = [p["step"] for p in all_points(client, job_id)]
        assert steps == list(range(1, job["progress"]["step"] + 1))
        checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
        assert checkpoints and checkpoints[-1]["step"] == steps[-1]
        kinds = [e["kind"] for e in client.get(f"/jobs/{job_id}/events").json()["events"]]
        assert "cancel_requested" in kinds and kinds[-1] == "cancelled"


@pytest.mark.timeout(540)
def test_kill_9_mid_job_resumes_from_checkpoint_with_the_same_curve(pg_api, pg_workers):
    first = pg_workers.start()
    with pg_api.client(pg_api.key("alice")) as client:
        reference = submit(client, FAULT_SPEC)
        assert wait_status(client, reference, ("succeeded", "failed"))["status"] == "succeeded", pg_workers.logs()
        expected = all_points(client, reference)

        job_id = submit(client, FAULT_SPEC)

        def past_first_checkpoint():
            checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
            return checkpoints and client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 6

        wait_for(past_first_checkpoint, 120, interval=0.1, what="a checkpoint and step 7")
        pg_workers.kill(first)
        pg_workers.start()
        job = wait_status(client, job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded", (job, pg_workers.logs())
        assert job["attempt"] == 2
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
        assert "requeued" in [e["kind"] for e in events]
        assert "resuming from step" in [e for e in events if e["kind"] == "started"][-1]["message"]
        got = all_points(client, job_id)
        assert [p["step"] for p in got] == list(range(1, 13))
        # mu barely moves in 12 steps, so also compare what the model computed: a resume
        # that lost optimizer, data or RNG state would show in the losses and entropy.
        for name in ("mu", "loss", "entropy"):
            assert [p.get(name) for p in got] == pytest.approx([p.get(name) for p in expected], abs=1e-6), name
