"""Evaluations run on the inference worker, scored by the training verifier; the stored
accuracy equals a recomputation over the stored outputs."""

import time

import pytest

from service.auth import authenticate
from service.db import get_database
from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer
from tests.inference_helpers import job_with_checkpoints, trained_run
from workers.trainer.data import arithmetic_split
from workers.trainer.rewards import is_correct

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(str(tmp_path_factory.mktemp("trained")))


def wait_done(client, job, evaluation_id, timeout=150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"/jobs/{job}/evaluations/{evaluation_id}").json()
        if data["status"] in ("succeeded", "failed"):
            return data
        time.sleep(0.3)
    raise AssertionError("evaluation did not finish")


@pytest.mark.timeout(300)
def test_evaluation_accuracy_matches_its_stored_outputs(pg_settings, run_dir, tmp_path):
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        alice, bob = api.key("alice"), api.key("bob")
        tenant = authenticate(get_database(pg_settings.resolved_database_url), alice).tenant_id
        job = job_with_checkpoints(pg_settings, tenant, run_dir)
        body = {"step": 10, "dataset": {"source": "builtin:arithmetic", "split": "id"}, "limit": 12,
                "sampling": {"max_tokens": 24, "temperature": 1.0, "seed": 0}}
        with api.client(alice) as client:
            created = client.post(f"/jobs/{job}/evaluations", json=body)
            assert created.status_code == 202, created.text
            done = wait_done(client, job, created.json()["id"])
            assert done["status"] == "succeeded", done["error"] or worker.logs()
            items = done["items"]
            records = arithmetic_split("id")[:12]
            assert [i["answer"] for i in items] == [r["answer"] for r in records]
            recomputed = sum(is_correct(i["output"], i["answer"]) for i in items) / len(items)
            assert done["total"] == 12 and done["accuracy"] == pytest.approx(recomputed)
            assert done["correct"] == sum(i["correct"] for i in items)

            default = client.post(f"/jobs/{job}/evaluations", json={"dataset": {"source": "builtin:arithmetic", "split": "ood"}, "limit": 4})
            assert default.status_code == 202 and default.json()["step"] == 10
            assert default.json()["sampling"]["temperature"] == 0.0
            listed = client.get(f"/jobs/{job}/evaluations").json()["evaluations"]
            assert {e["id"] for e in listed} == {created.json()["id"], default.json()["id"]}
            assert "items" not in listed[0]

            assert client.post(f"/jobs/{job}/evaluations", json={**body, "step": 7}).status_code == 404
            assert client.post(f"/jobs/{job}/evaluations", json={**body, "limit": 10**6}).status_code == 422
            bad_file = client.post(f"/jobs/{job}/evaluations", json={**body, "dataset": {"source": "file:" + "a" * 32}})
            assert bad_file.status_code == 422 and "uploaded files" in bad_file.json()["detail"]
            assert client.post(f"/jobs/{job}/evaluations", json={**body, "dataset": {"source": "/etc/passwd"}}).status_code == 422
        with api.client(bob) as other:
            assert other.get(f"/jobs/{job}/evaluations").status_code == 404
            assert other.get(f"/jobs/{job}/evaluations/{created.json()['id']}").status_code == 404
            assert other.post(f"/jobs/{job}/evaluations", json=body).status_code == 404


@pytest.mark.timeout(600)
def test_interactive_generate_completes_while_a_200_item_evaluation_runs(pg_settings, run_dir, tmp_path):
    """Evaluations decode at batch priority in small chunks: a /generate on the same
    checkpoint is answered while the evaluation is still running, and the evaluation
    reports its progress (done / total) meanwhile."""
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        alice = api.key("alice")
        tenant = authenticate(get_database(pg_settings.resolved_database_url), alice).tenant_id
        job = job_with_checkpoints(pg_settings, tenant, run_dir)
        body = {"step": 10, "dataset": {"source": "builtin:arithmetic", "split": "id"}, "limit": 200,
                "sampling": {"max_tokens": 24, "temperature": 0}}
        small = {"model": f"{job}:10", "prompts": ["Tom has 3 apples."], "max_tokens": 4, "temperature": 0}
        with api.client(alice) as client:
            client.timeout = 180
            assert client.post("/generate", json=small).status_code == 200, worker.logs()  # engine loaded
            evaluation = client.post(f"/jobs/{job}/evaluations", json=body).json()["id"]
            url = f"/jobs/{job}/evaluations/{evaluation}"
            progress = None
            deadline = time.monotonic() + 300
            while progress is None or not progress["done"]:
                assert time.monotonic() < deadline, worker.logs()
                progress = client.get(url).json()["progress"]
                time.sleep(0.2)
            answer = client.post("/generate", json=small)
            after = client.get(url).json()
            assert answer.status_code == 200, answer.text
            assert after["status"] == "running" and after["progress"]["done"] < after["progress"]["total"] == 200
            done = wait_done(client, job, evaluation, timeout=500)
            assert done["status"] == "succeeded" and done["progress"] == {"done": 200, "total": 200}
