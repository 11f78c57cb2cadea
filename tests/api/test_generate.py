"""POST /generate over HTTP, served by a real inference worker from a checkpoint made by a
real tiny training run: results, tenant isolation, and every error case."""

import uuid

import pytest

from service.auth import create_key
from service.db import get_database
from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer
from tests.inference_helpers import job_with_checkpoints, job_without_checkpoint, trained_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(str(tmp_path_factory.mktemp("trained")))


def tenant_of(settings, key):
    from service.auth import authenticate

    return authenticate(get_database(settings.resolved_database_url), key).tenant_id


@pytest.mark.timeout(240)
def test_generate_from_a_trained_checkpoint_and_every_error(pg_settings, run_dir, tmp_path):
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        alice, bob = api.key("alice"), api.key("bob")
        job = job_with_checkpoints(pg_settings, tenant_of(pg_settings, alice), run_dir)
        empty = job_without_checkpoint(pg_settings, tenant_of(pg_settings, alice))
        body = {"model": job, "prompts": ["Tom has 3 apples. He buys 4 more. How many apples does Tom have now?",
                                          [{"role": "user", "content": "Ana has 2 coins."}]],
                "max_tokens": 12, "temperature": 0.8, "n": 2, "seed": 1}
        with api.client(alice) as client:
            response = client.post("/generate", json=body, timeout=120)
            assert response.status_code == 200, response.text + worker.logs()
            data = response.json()
            assert data["model"] == f"{job}:10" and data["backend"] == "transformers"
            assert [len(r["completions"]) for r in data["results"]] == [2, 2]
            for result in data["results"]:
                assert result["prompt_tokens"] > 0
                for completion in result["completions"]:
                    assert 0 < completion["tokens"] <= 12 and completion["finish_reason"] in ("stop", "length")
            again = client.post("/generate", json=body).json()
            assert [r["completions"] for r in again["results"]] == [r["completions"] for r in data["results"]]
            step5 = client.post("/generate", json={**body, "model": f"{job}:5"})
            assert step5.status_code == 200 and step5.json()["model"] == f"{job}:5"
            base = client.post("/generate", json={"model": "base:builtin:tiny", "prompts": ["hi"], "max_tokens": 3})
            assert base.status_code == 200, base.text

            def error(status, fragment, **changes):
                response = client.post("/generate", json={**body, **changes})
                assert response.status_code == status, response.text
                assert fragment in response.json()["detail"], response.text

            error(404, "no job", model=uuid.uuid4().hex)
            error(404, "steps [5, 10]", model=f"{job}:7")
            error(409, "no checkpoint yet", model=empty)
            error(422, "max_tokens", max_tokens=100_000)
            error(422, "n = 1000", n=1000)
            error(422, "prompts", prompts=["x"] * 1000)
            error(422, "base models", model="base:local:../../etc")
            error(422, "model", model="/etc/passwd")
            error(422, "context", prompts=["x" * 1100], max_tokens=10)
        with api.client(bob) as other:  # another tenant's job looks like no job at all
            response = other.post("/generate", json=body)
            assert response.status_code == 404 and "no job" in response.json()["detail"]


@pytest.mark.timeout(60)
def test_no_inference_worker_answers_504(pg_settings, run_dir):
    settings = pg_settings.model_copy(update={"inference_timeout_seconds": 1.0})
    with ApiServer(settings) as api:
        key = api.key("alice")
        job = job_with_checkpoints(settings, tenant_of(settings, key), run_dir, steps=(10,))
        with api.client(key) as client:
            response = client.post("/generate", json={"model": job, "prompts": ["hi"], "max_tokens": 4})
    assert response.status_code == 504
    assert "inference worker did not answer" in response.json()["detail"]


@pytest.mark.timeout(180)
def test_embedded_default_generates_through_file_replies(embedded_settings, run_dir, tmp_path):
    with ApiServer(embedded_settings) as api, InferenceWorker(embedded_settings, tmp_path, concurrency=2) as worker:
        key = api.key("alice")
        job = job_with_checkpoints(embedded_settings, tenant_of(embedded_settings, key), run_dir, steps=(10,))
        with api.client(key) as client:
            response = client.post("/generate", json={"model": job, "prompts": ["hi"], "max_tokens": 4,
                                                      "temperature": 0}, timeout=120)
        assert response.status_code == 200, response.text + worker.logs()
        assert response.json()["results"][0]["completions"][0]["tokens"] <= 4
