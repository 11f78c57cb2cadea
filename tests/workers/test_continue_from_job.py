"""Continue from a job and checkpoint retention (issue 17), end to end: the API, PostgreSQL,
Redis and real Celery train workers running builtin:tiny."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TRAINING = {"total_steps": 6, "warmup_steps": 0, "save_every": 2, "eval_every": 2, "eval_limit": 8,
            "learning_rate": 3e-3, "sft_batch_size": 4, "max_completion_tokens": 8}
PARENT = {"method": "sft", "model": "builtin:tiny", "training": TRAINING, "retention": {"keep_last_n": 2}}


def finished(client, job_id: str) -> dict:
    def done():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, 300, what=f"job {job_id} to end")


def points(client, job_id: str) -> dict[int, dict]:
    page = client.get(f"/jobs/{job_id}/metrics", params={"after_step": -1, "limit": 1000}).json()["points"]
    return {p["step"]: p for p in page}


def test_second_job_starts_from_the_first_ones_checkpoint(pg_api, pg_workers):
    pg_workers.start()
    artifacts = pg_api.settings.resolved_artifacts_dir
    with pg_api.client(pg_api.key("alice")) as alice, pg_api.client(pg_api.key("bob")) as bob:
        parent = alice.post("/jobs", json=PARENT).json()["id"]
        job = finished(alice, parent)
        assert job["status"] == "succeeded", (job, pg_workers.logs())
        # Retention kept the newest two; step 2's folder is gone from disk too.
        kept = alice.get(f"/jobs/{parent}/checkpoints").json()["checkpoints"]
        assert [c["step"] for c in kept] == [4, 6]
        assert not (artifacts / "jobs" / parent / "checkpoints" / "step-000002").exists()
        assert (artifacts / kept[0]["path"] / "model.safetensors").is_file()

        child_spec = {**PARENT, "model": f"job:{parent}:4", "retention": None,
                      "training": {**TRAINING, "total_steps": 2}}
        assert bob.post("/jobs", json=child_spec).status_code == 404  # another tenant's job
        missing = alice.post("/jobs", json={**child_spec, "model": f"job:{parent}:2"})
        assert missing.status_code == 404 and "steps [4, 6]" in missing.json()["detail"]
        child = alice.post("/jobs", json=child_spec)
        assert child.status_code == 201, child.text
        job = finished(alice, child.json()["id"])
        assert job["status"] == "succeeded", (job, pg_workers.logs())
        parent_points, child_points = points(alice, parent), points(alice, job["id"])
    evals = {name for name in parent_points[4] if name.startswith("eval_accuracy_")}
    assert evals == {"eval_accuracy_id", "eval_accuracy_ood"}
    assert {name: child_points[0][name] for name in evals} == {name: parent_points[4][name] for name in evals}
    assert sorted(child_points) == [0, 1, 2]
    assert 0 not in parent_points  # only a continued job has a step-0 evaluation
