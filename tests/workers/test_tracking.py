"""Tracking export (issue 17): a real tiny training job (run_train_job, the Celery task's
function, on PostgreSQL) writes TensorBoard event files that download through the API and
read back with tensorboard's EventAccumulator; a tracker that cannot write never fails
the job."""

from __future__ import annotations

import io
import tarfile

import pytest

from service.lifecycle import job_dir
from workers.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SPEC = {"method": "amft", "model": "builtin:tiny", "integrations": [{"kind": "tensorboard"}],
        "training": {"total_steps": 4, "warmup_steps": 2, "save_every": 4, "sft_batch_size": 2,
                     "rl_prompts_per_step": 2, "num_generations": 2, "max_completion_tokens": 8,
                     "eval_every": 2, "eval_limit": 3}}


def test_tensorboard_files_hold_every_step_and_download(pg_api, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pg_api.client(pg_api.key("alice")) as client, pg_api.client(pg_api.key("bob")) as bob:
        job = client.post("/jobs", json=SPEC).json()["id"]
        assert run_train_job(job, pg_api.settings) == "succeeded"
        points = client.get(f"/jobs/{job}/metrics").json()["points"]
        archive = client.get(f"/jobs/{job}/artifacts/tensorboard")
        assert archive.status_code == 200, archive.text
        assert bob.get(f"/jobs/{job}/artifacts/tensorboard").status_code == 404
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    events = EventAccumulator(str(tmp_path / f"{job}-tensorboard"))
    events.Reload()
    mu = events.Scalars("mu")
    assert [e.step for e in mu] == [1, 2, 3, 4]
    assert [round(e.value, 5) for e in mu] == [round(p["mu"], 5) for p in points]
    rewards = {e.step: e.value for e in events.Scalars("reward_mean")}
    assert rewards and all(abs(rewards[p["step"]] - p["reward_mean"]) < 1e-6 for p in points if "reward_mean" in p)
    assert "spec/text_summary" in events.Tags()["tensors"]
    tables = events.Tensors("samples/text_summary")  # sampled completions with rewards, every eval_every steps
    assert [t.step for t in tables] == [2, 4]
    table = tables[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| split | prompt | completion | reward | correct |") and table.count("\n| ") >= 3


def test_a_tracker_that_cannot_write_records_an_event_and_the_job_succeeds(pg_api):
    with pg_api.client(pg_api.key("alice")) as client:
        job = client.post("/jobs", json=SPEC).json()["id"]
        blocked = job_dir(pg_api.settings.resolved_artifacts_dir, job) / "tensorboard"
        blocked.parent.mkdir(parents=True)
        blocked.write_text("a file where the event folder should be")
        assert run_train_job(job, pg_api.settings) == "succeeded"
        events = client.get(f"/jobs/{job}/events").json()["events"]
        assert client.get(f"/jobs/{job}").json()["status"] == "succeeded"
    errors = [e for e in events if e["kind"] == "tracker_error"]
    assert errors and "tensorboard export failed" in errors[0]["message"]
