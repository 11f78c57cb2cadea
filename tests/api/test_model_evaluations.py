"""POST /evaluations: any model /generate accepts, here the untrained base, scored by the
service's own grader on the inference worker; tenancy and bad references answer 4xx."""


import pytest

from service.auth import authenticate
from service.db import get_database
from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer, wait_for
from tests.inference_helpers import job_without_checkpoint
from workers.trainer.data import arithmetic_split
from workers.trainer.rewards import is_correct

pytestmark = pytest.mark.slow


def wait_done(client, evaluation_id, timeout=200):
    finished = lambda: (data := client.get(f"/evaluations/{evaluation_id}").json())["status"] in ("succeeded", "failed") and data
    return wait_for(finished, timeout, interval=0.3, what="the evaluation to finish")


@pytest.mark.timeout(300)
def test_a_base_model_is_evaluated_with_the_services_grader(pg_settings, tmp_path):
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        alice, bob = api.key("alice"), api.key("bob")
        body = {"model": "base:builtin:tiny", "dataset": {"source": "builtin:arithmetic", "split": "id"}, "limit": 4,
                "sampling": {"max_tokens": 8, "temperature": 1.0, "seed": 0}}
        with api.client(alice) as client:
            created = client.post("/evaluations", json=body)
            assert created.status_code == 202, created.text
            assert created.json()["model"] == "base:builtin:tiny" and created.json()["job_id"] is None
            done = wait_done(client, created.json()["id"])
            assert done["status"] == "succeeded", done["error"] or worker.logs()
            items = done["items"]
            assert [i["answer"] for i in items] == [r["answer"] for r in arithmetic_split("id")[:4]]
            assert done["accuracy"] == pytest.approx(sum(is_correct(i["output"], i["answer"]) for i in items) / 4)
            assert all(i["tokens"] <= 8 for i in items) and done["progress"] == {"done": 4, "total": 4}
            assert [e["id"] for e in client.get("/evaluations").json()["evaluations"]] == [created.json()["id"]]

            assert client.post("/evaluations", json={**body, "model": "base:gpt-4"}).status_code == 422
            assert client.post("/evaluations", json={**body, "model": "0" * 32}).status_code == 404
            tenant = authenticate(get_database(pg_settings.resolved_database_url), alice).tenant_id
            unfinished = client.post("/evaluations", json={**body, "model": job_without_checkpoint(pg_settings, tenant)})
            assert unfinished.status_code == 409 and "no checkpoint" in unfinished.json()["detail"]
        with api.client(bob) as other:
            assert other.get(f"/evaluations/{created.json()['id']}").status_code == 404
            assert other.get("/evaluations").json()["evaluations"] == []
