"""JSONL uploads: validated line by line with line numbers, capped while streaming."""

from __future__ import annotations

import pytest

from tests.conftest import ApiServer

pytestmark = pytest.mark.timeout(60)

GOOD = (
    b'{"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5. #### 5", "answer": "5"}\n'
    b'{"prompt": [{"role": "user", "content": "What is 7 - 4?"}], "answer": 3}\n'
)


@pytest.fixture
def small_cap_api(pg_settings):
    with ApiServer(pg_settings.model_copy(update={"max_upload_bytes": 4096})) as server:
        yield server


def stored_files(server) -> list:
    folder = server.settings.resolved_artifacts_dir / "files"
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_upload_list_and_use(small_cap_api):
    with small_cap_api.client(small_cap_api.key("alice")) as client:
        response = client.post("/files", params={"filename": "train.jsonl"}, content=GOOD,
                               headers={"Content-Type": "application/jsonl"})
        assert response.status_code == 201, response.text
        uploaded = response.json()
        assert (uploaded["records"], uploaded["bytes"], uploaded["filename"]) == (2, len(GOOD), "train.jsonl")
        assert uploaded["source"] == f"file:{uploaded['id']}" and len(uploaded["id"]) == 32
        assert stored_files(small_cap_api) == [f"{uploaded['id']}.jsonl"]
        assert [f["id"] for f in client.get("/files").json()["files"]] == [uploaded["id"]]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"prompt,answer\nWhat is 1+1?,2\n", "line 1"),
        (GOOD + b'{"prompt": "x"}\n', "line 3"),
        (GOOD + b'{"prompt": "x", "an swer": "1"}\n', "line 3"),
        (b"", "no records"),
        (b"\xff\xfe not utf-8\n", "line 1"),
    ],
)
def test_invalid_files_name_the_line(small_cap_api, content, expected):
    with small_cap_api.client(small_cap_api.key("alice")) as client:
        response = client.post("/files", content=content)
        assert response.status_code == 422, response.text
        assert expected in response.json()["detail"]
        assert client.get("/files").json()["files"] == [] and stored_files(small_cap_api) == []


def test_oversized_uploads_are_refused_while_streaming(small_cap_api):
    big = GOOD * 100  # ~14 kB, cap 4 kB
    with small_cap_api.client(small_cap_api.key("alice")) as client:
        declared = client.post("/files", content=big)
        assert declared.status_code == 413 and "4096 bytes" in declared.json()["detail"]
        chunked = client.post("/files", content=iter([big[i:i + 1000] for i in range(0, len(big), 1000)]))
        assert chunked.status_code == 413
        multipart = client.post("/files", files={"file": ("train.jsonl", GOOD)})
        assert multipart.status_code == 422 and "--data-binary" in multipart.json()["detail"]
        assert client.get("/files").json()["files"] == [] and stored_files(small_cap_api) == []


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"def score(completions, **kw):\n    return []\n", "define a top-level `def reward"),
        (b"def reward(completions, **kw):\n    return [\n", "line 2: syntax error"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_grader_uploads_are_parsed_never_run(small_cap_api, content, expected):
    with small_cap_api.client(small_cap_api.key("alice")) as client:
        response = client.post("/files", params={"purpose": "grader", "filename": "g.py"}, content=content)
        assert response.status_code == 422 and expected in response.text, response.text
        assert stored_files(small_cap_api) == []
        good = b"import os\nos.system('touch /tmp/never')\ndef reward(completions, **kw):\n    return [1.0] * len(completions)\n"
        response = client.post("/files", params={"purpose": "grader", "filename": "g.py"}, content=good)
        assert response.status_code == 201, response.text
        assert response.json()["purpose"] == "grader" and response.json()["records"] == 0
        assert stored_files(small_cap_api) == [f"{response.json()['id']}.py"]
