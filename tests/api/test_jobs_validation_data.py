"""POST /jobs checks that the validation stream has what the meta step reads (issue 16): a
one-line 422 naming the field and the dataset, not a KeyError at the first meta step."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.timeout(60)

ANSWERS_ONLY = b'{"prompt": "What is 2 + 3?", "answer": "5"}\n{"prompt": "What is 7 - 4?", "answer": 3}\n'
COMPLETIONS_ONLY = b'{"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5. #### 5"}\n'


@pytest.fixture
def client(pg_api):
    with pg_api.client(pg_api.key("alice")) as client:
        yield client


def upload(client, content: bytes) -> str:
    response = client.post("/files", params={"filename": "val.jsonl"}, content=content)
    assert response.status_code == 201, response.text
    return response.json()["source"]


def with_validation(source: str, **controller) -> dict:
    spec = copy.deepcopy(TINY_SPEC)
    spec["datasets"] = {"validation": {"source": source}}
    spec["controller"] |= controller
    return spec


def refused(client, spec: dict) -> str:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    problems = response.json()["problems"]
    assert len(problems) == 1 and "\n" not in problems[0]
    return problems[0]


def test_a_builtin_validation_set_without_answers_is_refused(client):
    message = refused(client, with_validation("builtin:json_extract"))
    assert message.startswith("datasets.validation: builtin:json_extract has no 'answer'")
    assert "math_verify" in message and "meta_utility: nll" in message
    assert client.get("/jobs").json()["jobs"] == []


def test_an_uploaded_validation_file_is_read_for_the_needed_field(client):
    answers, completions = upload(client, ANSWERS_ONLY), upload(client, COMPLETIONS_ONLY)
    message = refused(client, with_validation(completions))  # reward utility: needs answers
    assert f"datasets.validation: {completions} has no 'answer' on record 1" in message
    message = refused(client, with_validation(answers, meta_utility="nll"))  # nll: needs completions
    assert f"datasets.validation: {answers} has no 'completion' on record 1" in message
    assert "nll utility" in message

    for spec in (with_validation(answers), with_validation(completions, meta_utility="nll"),
                 with_validation(completions, eta_meta=0.0)):  # without meta steps it is never read
        assert client.post("/jobs", json=spec).status_code == 201
