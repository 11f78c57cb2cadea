"""Another tenant's resources answer 404 on every route (indistinguishable from none)."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.timeout(60)

RECORD = b'{"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5. #### 5", "answer": "5"}\n'


def test_other_tenants_ids_are_not_found(pg_api):
    with pg_api.client(pg_api.key("alice")) as alice, pg_api.client(pg_api.key("bob")) as bob:
        job_id = alice.post("/jobs", json=TINY_SPEC).json()["id"]
        file_id = alice.post("/files", content=RECORD).json()["id"]
        for method, path, kwargs in [
            ("GET", f"/jobs/{job_id}", {}),
            ("POST", f"/jobs/{job_id}/cancel", {}),
            ("GET", f"/jobs/{job_id}/metrics", {}),
            ("GET", f"/jobs/{job_id}/events", {}),
            ("GET", f"/jobs/{job_id}/events", {"headers": {"Accept": "text/event-stream"}}),
            ("GET", f"/jobs/{job_id}/checkpoints", {}),
        ]:
            response = bob.request(method, path, **kwargs)
            assert response.status_code == 404, (path, response.text)
            assert response.json()["detail"] == f"no job {job_id}"
        assert bob.get("/jobs").json()["jobs"] == []
        assert bob.get("/files").json()["files"] == []
        spec = {**TINY_SPEC, "datasets": {"sft": {"source": f"file:{file_id}"}}}
        stolen = bob.post("/jobs", json=spec)
        assert stolen.status_code == 422 and "not one of your uploaded files" in stolen.json()["detail"]
        assert alice.post("/jobs", json=spec).status_code == 201
        # Alice's job is untouched by Bob's attempts.
        assert alice.get(f"/jobs/{job_id}").json()["status"] == "queued"
        assert [job["id"] for job in alice.get("/jobs").json()["jobs"]][-1] == job_id
