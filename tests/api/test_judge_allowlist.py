"""POST /jobs with a `model` grader: a judge URL off the operator's allowlist, or another
tenant's job as the judge, answers 4xx naming the field; nothing is created."""

from __future__ import annotations

import pytest

from service.settings import get_settings
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.timeout(60)
ALLOWED = "https://judge.internal.example/v1"


def with_judge(**fields) -> dict:
    return {**TINY_SPEC, "reward": [{"kind": "math_verify", "weight": 0.5},
                                    {"kind": "model", "prompt": "Rate 0-10: {completion}", "score_max": 10, **fields}]}


def jobs(client) -> list:
    return client.get("/jobs").json()["jobs"]


def test_judge_urls_need_the_allowlist_and_served_judges_the_same_tenant(pg_api, monkeypatch):
    monkeypatch.setenv("AMFT_JUDGE_URL_ALLOWLIST", f"{ALLOWED}/, https://other.example/v1")
    get_settings.cache_clear()
    try:
        with pg_api.client(pg_api.key("alice")) as alice, pg_api.client(pg_api.key("bob")) as bob:
            refused = alice.post("/jobs", json=with_judge(model="gpt-4o-mini", url="https://evil.example/v1"))
            assert refused.status_code == 422, refused.text
            assert "reward.1.model.url" in refused.text and "AMFT_JUDGE_URL_ALLOWLIST" in refused.text
            near_miss = alice.post("/jobs", json=with_judge(model="m", url=f"{ALLOWED}/../../admin"))
            assert near_miss.status_code == 422 and "reward.1.model.url" in near_miss.text
            assert jobs(alice) == []

            allowed = alice.post("/jobs", json=with_judge(model="gpt-4o-mini", url=ALLOWED))
            assert allowed.status_code == 201, allowed.text
            judge_job = allowed.json()["id"]
            assert allowed.json()["spec"]["reward"][1]["url"] == ALLOWED

            served = alice.post("/jobs", json=with_judge(model=f"job:{judge_job}"))
            assert served.status_code == 201, served.text
            assert alice.post("/jobs", json=with_judge(model="base:builtin:tiny")).status_code == 201
            stranger = bob.post("/jobs", json=with_judge(model=judge_job))
            assert stranger.status_code == 422 and "reward.1.model" in stranger.text and judge_job in stranger.text
            unknown = alice.post("/jobs", json=with_judge(model="gpt-4o-mini"))
            assert unknown.status_code == 422 and "without url" in unknown.text
            assert jobs(bob) == []
    finally:
        get_settings.cache_clear()
