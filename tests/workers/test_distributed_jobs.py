"""Issue 14 through the service: POST /jobs with resources.devices = 2 on a real Celery
worker that runs the job with torchrun (2 gloo ranks on CPU), against PostgreSQL + Redis."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.api.inference_env import InferenceWorker
from tests.conftest import wait_for
from tests.workers.test_tasks import all_points, submit, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TWO_DEVICE_SPEC = {
    "method": "amft",
    "model": "builtin:tiny",
    "resources": {"devices": 2},
    "training": {"total_steps": 8, "warmup_steps": 2, "save_every": 4, "sft_batch_size": 2, "rl_prompts_per_step": 2,
                 "num_generations": 2, "max_completion_tokens": 12, "device": "cpu"},
    "controller": {"meta_interval": 3, "meta_val_prompts": 2},
}
TWO_DEVICES = {"AMFT_WORKER_DEVICES": "2", "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch_folder(settings, job_id: str, attempt: int) -> Path:
    return settings.resolved_artifacts_dir / "jobs" / job_id / "launch" / f"attempt-{attempt}"


def events(client, job_id: str) -> list[dict]:
    return client.get(f"/jobs/{job_id}/events").json()["events"]


def test_two_device_job_runs_under_torchrun_to_success(pg_api, pg_workers, tmp_path):
    pg_workers.start(extra_env=TWO_DEVICES)
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, TWO_DEVICE_SPEC)
        job = wait_status(client, job_id, ("succeeded", "failed"), timeout=800)
        assert job["status"] == "succeeded", (job, pg_workers.logs())
        assert [p["step"] for p in all_points(client, job_id)] == list(range(1, 9))  # each step exactly once
        checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
        assert [c["step"] for c in checkpoints] == [4, 8]
        folder = launch_folder(pg_api.settings, job_id, 1)
        assert {json.loads((folder / f"exit-rank{r}.json").read_text())["status"] for r in (0, 1)} == {"completed"}
        assert "torch.distributed.run" in (folder / "torchrun.log").read_text() or (folder / "pid-rank1").exists()
        # The checkpoint holds each rank's shard of the training state and the gathered model,
        # which /generate serves (started after training, to leave the CPUs to the ranks).
        job_dir = pg_api.settings.resolved_artifacts_dir / "jobs" / job_id
        assert len(list((job_dir / "checkpoints" / "step-000008" / "sharded").glob("shard-*.safetensors"))) == 2
        with InferenceWorker(pg_api.settings, tmp_path, concurrency=1) as worker:
            reply = client.post("/generate", json={"model": f"{job_id}:8", "prompts": ["What is 2 + 3?"],
                                                   "max_tokens": 8, "temperature": 0}, timeout=300)
            assert reply.status_code == 200, reply.text + worker.logs()
            assert isinstance(reply.json()["results"][0]["completions"][0]["text"], str)


def test_a_worker_with_too_few_devices_declines(pg_api, pg_workers):
    pg_workers.start()  # AMFT_WORKER_DEVICES = 1
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, TWO_DEVICE_SPEC)
        declined = wait_for(lambda: [e for e in events(client, job_id) if e["kind"] == "declined"], 120,
                            what="a declined event")
        assert "resources.devices = 2 but this worker serves 1" in declined[0]["message"]
        # Every decline costs an attempt: the job ends failed, naming why, instead of cycling forever.
        job = wait_status(client, job_id, ("failed", "succeeded"), timeout=120)
        assert (job["status"], job["error"]["code"]) == ("failed", "unservable"), job
        assert "this worker serves 1" in job["error"]["message"] and "max_attempts=3" in job["error"]["message"]
        assert client.get(f"/jobs/{job_id}/metrics").json()["points"] == []  # never ran smaller


def test_kill_9_of_one_rank_releases_and_the_job_resumes(pg_api, pg_workers):
    pg_workers.start(extra_env=TWO_DEVICES)
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, TWO_DEVICE_SPEC)
        wait_for(lambda: client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
                 and client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 5, 600, interval=0.1,
                 what="a checkpoint and step 5")
        rank1 = int((launch_folder(pg_api.settings, job_id, 1) / "pid-rank1").read_text())
        os.kill(rank1, signal.SIGKILL)
        job = wait_status(client, job_id, ("succeeded", "failed"), timeout=800)
        assert job["status"] == "succeeded", (job, pg_workers.logs())
        kinds = [e["kind"] for e in events(client, job_id)]
        assert "released" in kinds and kinds.count("started") == 2
        assert "resuming from step 4" in [e for e in events(client, job_id) if e["kind"] == "started"][-1]["message"]
        assert [p["step"] for p in all_points(client, job_id)] == list(range(1, 9))


def test_cancel_reaches_every_rank(pg_api, pg_workers):
    pg_workers.start(extra_env=TWO_DEVICES)
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, TWO_DEVICE_SPEC)
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 2, 600, what="step 2")
        assert client.post(f"/jobs/{job_id}/cancel").json()["cancel_requested"] is True
        job = wait_status(client, job_id, ("cancelled", "succeeded", "failed"), timeout=600)
        assert job["status"] == "cancelled", (job, pg_workers.logs())
        folder = launch_folder(pg_api.settings, job_id, 1)
        ends = [json.loads((folder / f"exit-rank{r}.json").read_text()) for r in (0, 1)]
        assert [e["status"] for e in ends] == ["stopped", "stopped"]
        assert ends[0]["last_step"] == ends[1]["last_step"] == job["progress"]["step"] < 8
