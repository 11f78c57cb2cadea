"""Fixtures of the hostile-input suite: the API on the shared test PostgreSQL (a fresh
database per test, see tests/conftest.py), two tenants, and rows made directly in the
database where a case needs a job with a checkpoint or an evaluation (no worker needed)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from service.db import get_database
from service.evaluations import Evaluation
from service.models import Checkpoint
from tests.conftest import TINY_SPEC, ApiServer

RECORD = b'{"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5. #### 5", "answer": "5"}\n'


def error_text(response) -> str:
    """The message of an error answer in either documented shape: the service's
    {"detail", "problems"}, or OpenAI's {"error": {"message", ...}} on /v1/* (issue 19)."""
    body = response.json()
    return body["error"]["message"] if "error" in body else body["detail"]


def was_refused(path: str, response) -> bool:
    """Whether a request was refused as bad input the way its route family does it: 422 on
    the service's routes; 400, or 404 for a model that names nothing, on /v1/* (OpenAI's classes)."""
    return response.status_code in ((400, 404) if path.startswith("/v1") else (422,))


@dataclass
class Tenants:
    api: ApiServer
    alice_key: str
    bob_key: str

    def alice(self):
        return self.api.client(self.alice_key)

    def bob(self):
        return self.api.client(self.bob_key)


@pytest.fixture
def tenants(pg_api: ApiServer) -> Tenants:
    return Tenants(pg_api, pg_api.key("alice"), pg_api.key("bob"))


def job_with_checkpoint(tenants: Tenants) -> tuple[str, str]:
    """Alice's job with a recorded checkpoint at step 5 and an evaluation row: (job id, evaluation id)."""
    with tenants.alice() as alice:
        job_id = alice.post("/jobs", json=TINY_SPEC).json()["id"]
    evaluation_id = uuid.uuid4().hex
    db = get_database(tenants.api.settings.resolved_database_url)
    with db.transaction() as session:
        session.add(Checkpoint(job_id=job_id, step=5, path=f"jobs/{job_id}/checkpoints/step-000005", attempt=1))
        tenant_id = session.execute(
            __import__("sqlalchemy").text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar()
        session.add(Evaluation(id=evaluation_id, tenant_id=tenant_id, job_id=job_id, step=5, model=f"{job_id}:5", status="succeeded",
                               dataset={"source": "builtin:arithmetic", "split": "id"}, sampling={},
                               total=1, correct=1, accuracy=1.0, items=[]))
    return job_id, evaluation_id
