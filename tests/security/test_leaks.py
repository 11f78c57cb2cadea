"""Issue 13, security item 5: leaks.

(a) error messages a tenant reads carry no absolute server path: a real worker fails a job
    whose message quotes one, an evaluation fails with one, a relayed worker error has one;
(b) every 500 answers the documented JSON error shape ({"detail", "problems"}), whether
    raised in a route or in a middleware, and a failure inside an open event stream ends it
    with an `error` message of that shape;
(c) an event stream opened with a key ends once the key is revoked (re-checked every
    AMFT_SSE_KEY_RECHECK_SECONDS), also where the API caches verified keys.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import text
from starlette.middleware import Middleware

from api.feeds import JobFeeds
from service.auth import revoke_key
from service.db import get_database
from service.errors import InvalidInput
from service.evaluations import fail_evaluation
from service.redact import ABSOLUTE_PATH, redact_paths
from service.settings import get_settings
from tests.conftest import TINY_SPEC, ApiServer, wait_for
from tests.security.conftest import job_with_checkpoint

pytestmark = pytest.mark.timeout(240)


def _no_server_path(message: str, *folders) -> None:
    assert ABSOLUTE_PATH.search(message) is None, message
    for folder in folders:
        assert str(folder) not in message, (folder, message)


def test_13_5a_error_messages_carry_no_server_paths(tenants, pg_workers, record, tmp_path, monkeypatch):
    settings = tenants.api.settings
    # fail_evaluation runs in the inference worker, whose process settings come from AMFT_*.
    monkeypatch.setenv("AMFT_HOME", str(settings.home))
    get_settings.cache_clear()
    pg_workers.start()
    with tenants.alice() as alice:
        job_id = alice.post("/jobs", json={**TINY_SPEC, "model": "local:nothing-here"}).json()["id"]
        job = wait_for(lambda: (j := alice.get(f"/jobs/{job_id}").json())["status"] == "failed" and j,
                       timeout=120, what="the job to fail")
        message = job["error"]["message"]
        _no_server_path(message, tmp_path, settings.resolved_models_dir)
        assert "<models>" in message, message  # the neutral form, still saying which folder
        events = alice.get(f"/jobs/{job_id}/events").json()["events"]
        for event in events:
            _no_server_path(event["message"], tmp_path)
        # An evaluation that fails with a path in its message (recorded by the inference worker).
        eval_job, evaluation_id = job_with_checkpoint(tenants)
        db = get_database(settings.resolved_database_url)
        with db.transaction() as session:
            session.execute(text("UPDATE evaluations SET status = 'running' WHERE id = :id"), {"id": evaluation_id})
        artifacts = settings.resolved_artifacts_dir
        try:
            fail_evaluation(db, evaluation_id, f"OSError: cannot open {artifacts}/jobs/{eval_job}/checkpoints/"
                                               f"step-000005/model.safetensors via /usr/lib/python3.11/shutil.py")
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
        evaluation = alice.get(f"/jobs/{eval_job}/evaluations/{evaluation_id}").json()
        _no_server_path(evaluation["error"], artifacts)
        assert evaluation["error"].startswith("OSError: cannot open <artifacts>/jobs/"), evaluation["error"]
    # Other members of the class: tracebacks, the home folder, paths in quotes and URLs.
    samples = [f"File \"{tmp_path}/x.py\", line 3", f"'{settings.home.resolve()}/amft.db' is locked",
               "No such file: '/etc/amft/secret.json'", "file:///var/lib/data.jsonl", "[Errno 13] /root/.cache/x"]
    for sample in samples:
        _no_server_path(redact_paths(sample, settings), tmp_path)
    # Not paths of the server: hub ids, fractions, this API's routes quoted as advice, URLs.
    for kept in ("hub:org/name and 1/2 of it", "see GET /jobs/abc/evaluations or POST /files?filename=x",
                 "read https://huggingface.co/docs/datasets", "use /v1/chat/completions"):
        assert redact_paths(kept, settings) == kept
    record("13.5a", "a real worker fails a job on local:nothing-here (the loader's message quotes the models "
                    "folder); an evaluation fails with an artifacts path and a library path; 5 more messages "
                    "(traceback line, database file, quoted path, file:// URL, cache path)",
           "no absolute server path in what the tenant reads; the folder named neutrally",
           f"job error {message!r}; evaluation error {evaluation['error']!r}; {len(events)} job events and "
           f"the 5 other messages carry no absolute path")


def _app_with_faults(settings) -> ApiServer:
    """The real app plus two test-only failures: a route and a middleware that raise."""
    server = ApiServer(settings)
    secret = f"{settings.resolved_artifacts_dir}/secret-{uuid.uuid4().hex[:6]}"

    @server.app.get("/test-fault/route")
    def _route_fault():
        raise RuntimeError(f"boom in a route: {secret}")

    @server.app.get("/test-fault/service")
    def _service_fault():
        raise InvalidInput(f"the worker could not read {secret}/model.safetensors")

    class FaultyMiddleware:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/test-fault/middleware":
                raise KeyError(f"boom in a middleware: {secret}")
            return await self.app(scope, receive, send)

    # Innermost of the app's middleware stack (next to the router), like BodyLimit.
    server.app.user_middleware.append(Middleware(FaultyMiddleware))
    server.secret = secret
    return server


def _sse_messages(response: httpx.Response) -> list[dict]:
    messages, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                messages.append(current)
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value.strip()
    return messages


def test_13_5b_every_500_answers_the_json_error_shape(pg_settings, record):
    with _app_with_faults(pg_settings) as server:
        key = server.key("alice")
        answers = {}
        with server.client(key) as client:
            for path in ("/test-fault/route", "/test-fault/middleware"):
                response = client.get(path)
                answers[path] = response.status_code
                assert response.status_code == 500, (path, response.text)
                assert response.headers["content-type"].startswith("application/json"), response.headers
                body = response.json()
                assert set(body) == {"detail", "problems"} and body["problems"] == [body["detail"]], body
                assert server.secret not in response.text and "boom" not in response.text, response.text
            response = client.get("/test-fault/service")
            assert response.status_code == 422 and "<artifacts>/secret-" in response.json()["detail"], response.text
            _no_server_path(response.json()["detail"])
            # A failure inside an open stream (the database gone mid-stream): an `error` message, then the end.
            job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]
            server.app.state.feeds = JobFeeds(get_database("postgresql+psycopg://postgres@127.0.0.1:1/nowhere"))
            with client.stream("GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}) as stream:
                assert stream.status_code == 200
                messages = _sse_messages(stream)
        assert [m.get("event") for m in messages] == ["error"], messages
        error = json.loads(messages[0]["data"])
        assert set(error) == {"detail", "problems"} and "database" in error["detail"], error
    record("13.5b", "an exception in a route and one in an ASGI middleware (test-only faults in the real app); a "
                    "service error quoting an artifacts path; the database gone under an open SSE stream",
           "500 with {detail, problems} JSON, no exception text; paths redacted; the stream ends with an error "
           "message of the same shape",
           f"route and middleware: {sorted(set(answers.values()))} application/json {{detail, problems}}, no "
           f"exception text or path; service error redacted to <artifacts>/...; stream: one `error` message "
           f"{error['detail']!r}, then closed")


@pytest.mark.parametrize("cache_seconds", [0.0, 60.0])
def test_13_5c_event_stream_ends_after_its_key_is_revoked(pg_settings, record, cache_seconds):
    settings = pg_settings.model_copy(update={"sse_key_recheck_seconds": 0.5, "auth_cache_seconds": cache_seconds})
    with ApiServer(settings) as server:
        db = get_database(settings.resolved_database_url)
        key = server.key("alice")
        other_key = server.key("alice")  # a second key of the same tenant: its stream must go on
        with server.client(key) as client:
            job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]  # stays queued: no worker
        results: dict[str, list] = {}

        def follow(name: str, which: str) -> None:
            with server.client(which) as client, client.stream(
                "GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, timeout=60
            ) as stream:
                results[name] = _sse_messages(stream)

        threads = {name: threading.Thread(target=follow, args=(name, k), daemon=True)
                   for name, k in (("revoked", key), ("kept", other_key))}
        for thread in threads.values():
            thread.start()
        time.sleep(1.5)  # both streams open and past a few key checks
        assert "revoked" not in results, "the stream ended before the key was revoked"
        prefix = key[:12]
        revoke_key(db, prefix)
        wait_for(lambda: "revoked" in results, timeout=30, what="the revoked key's stream to end")
        messages = results["revoked"]
        assert messages and messages[-1].get("event") == "error", messages
        error = json.loads(messages[-1]["data"])
        assert set(error) == {"detail", "problems"} and "revoked" in error["detail"], error
        assert "kept" not in results, "the other key's stream ended too"
        with server.client(key) as client:
            assert client.get(f"/jobs/{job_id}").status_code in (200, 401)  # 401 once any cache entry expires
    if cache_seconds == 0.0:
        record("13.5c", "an SSE stream of a queued job opened with a key, the key revoked while the stream is "
                        "open (AMFT_SSE_KEY_RECHECK_SECONDS=0.5; also with AMFT_AUTH_CACHE_SECONDS=60); a second "
                        "key's stream on the same job",
               "the revoked key's stream ends with an error message; the other stream goes on",
               f"revoked stream ended with `error` {error['detail']!r}; the other key's stream stayed open; the "
               f"same with the key cache on (its test case); default re-check 30 s")
