"""Webhooks (issue 17) through the real API, PostgreSQL and a real HTTP receiver on
127.0.0.1 (allowlisted here): Standard Webhooks signatures, retries with the same id, a
killed API redelivering after restart, and SSRF refusals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from service.db import get_database
from service.webhooks import OutboxMessage
from tests.api.webhook_receiver import Receiver
from tests.conftest import ROOT, TINY_SPEC, ApiServer, settings_env, wait_for

pytestmark = pytest.mark.timeout(120)
FAST_HOOKS = {"webhook_allowed_hosts": "127.0.0.1", "webhook_poll_seconds": 0.1, "webhook_backoff_seconds": 0.1,
              "webhook_claim_seconds": 2.0}


def cancelled_job(client) -> str:
    """A job.cancelled event: create a job (no worker runs it) and cancel it while queued."""
    job = client.post("/jobs", json=TINY_SPEC).json()["id"]
    assert client.post(f"/jobs/{job}/cancel").json()["status"] == "cancelled"
    return job


def outbox(settings) -> list[OutboxMessage]:
    with get_database(settings.resolved_database_url).read() as session:
        return list(session.scalars(select(OutboxMessage)))


def test_signed_delivery_retried_with_the_same_id(pg_settings):
    settings = pg_settings.model_copy(update=FAST_HOOKS)
    with Receiver([500, 500, 500, 200]) as receiver, ApiServer(settings) as api, api.client(api.key("alice")) as client:
        hook = client.post("/webhooks", json={"url": receiver.url, "events": ["job.cancelled"]})
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        job = cancelled_job(client)
        wait_for(lambda: len(receiver.requests) >= 4, 30, what="four delivery attempts")
        wait_for(lambda: outbox(settings)[0].delivered_at is not None, 10, what="the delivery to be recorded")
        [row] = outbox(settings)
        assert row.attempts == 4 and row.last_error is None
    assert len(set(receiver.ids())) == 1 and len(receiver.ids()) == 4  # no send after the 200
    for request in receiver.requests:  # raises if a signature does not verify
        assert Webhook(secret).verify(request["body"], request["headers"])["data"]["job_id"] == job
    assert receiver.payloads()[0]["type"] == "job.cancelled"
    assert receiver.ids()[0] == row.id


def test_private_and_loopback_destinations_are_refused(pg_api):
    with pg_api.client(pg_api.key("alice")) as alice, pg_api.client(pg_api.key("bob")) as bob:
        for url in ("http://10.1.2.3/hook", "http://127.0.0.1:9/hook", "http://localhost/hook",
                    "http://169.254.169.254/latest", "http://[::1]/hook", "ftp://example.com/x"):
            response = alice.post("/webhooks", json={"url": url})
            assert response.status_code == 422, (url, response.text)
        assert "private or reserved" in alice.post("/webhooks", json={"url": "http://192.168.1.1/"}).json()["detail"]
        bad_event = alice.post("/webhooks", json={"url": "http://10.0.0.1/", "events": ["job.exploded"]})
        assert bad_event.status_code == 422 and "job.exploded" in bad_event.json()["detail"]
        assert alice.get("/webhooks").json() == {"webhooks": []}
        assert bob.delete("/webhooks/" + "0" * 32).status_code == 404


def test_allowlisted_endpoint_can_be_listed_and_deleted(pg_settings):
    settings = pg_settings.model_copy(update=FAST_HOOKS)
    with ApiServer(settings) as api, api.client(api.key("alice")) as alice, api.client(api.key("bob")) as bob:
        created = alice.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"}).json()
        listed = alice.get("/webhooks").json()["webhooks"]
        assert [w["id"] for w in listed] == [created["id"]] and "secret" not in listed[0]
        assert bob.get("/webhooks").json() == {"webhooks": []}
        assert bob.delete(f"/webhooks/{created['id']}").status_code == 404
        assert alice.delete(f"/webhooks/{created['id']}").status_code == 204
        assert alice.get("/webhooks").json() == {"webhooks": []}


def start_api(settings, port: int, log) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(180)
def test_api_killed_mid_delivery_redelivers_after_restart_with_one_id(pg_settings, tmp_path):
    from service.auth import create_key

    settings = pg_settings.model_copy(update=FAST_HOOKS)
    key = create_key(get_database(settings.resolved_database_url), "alice")[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url, log = f"http://127.0.0.1:{port}", (tmp_path / "api.log").open("w")
    release = threading.Event()
    with Receiver([200], hold_first=release) as receiver:
        api = start_api(settings, port, log)
        try:
            wait_for(lambda: healthy(url), 60, what="the API to start")
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
                secret = client.post("/webhooks", json={"url": receiver.url}).json()["secret"]
                cancelled_job(client)
            wait_for(lambda: receiver.requests, 30, what="the first delivery to reach the receiver")
            os.killpg(api.pid, signal.SIGKILL)  # mid-delivery: the receiver has not answered yet
            api.wait(10)
            release.set()
            assert outbox(settings)[0].delivered_at is None
            api = start_api(settings, port, log)
            wait_for(lambda: outbox(settings)[0].delivered_at is not None, 60, what="redelivery after restart")
        finally:
            if api.poll() is None:
                os.killpg(api.pid, signal.SIGTERM)
                api.wait(20)
    ids = receiver.ids()
    assert len(ids) >= 2 and set(ids) == {outbox(settings)[0].id}
    Webhook(secret).verify(receiver.requests[-1]["body"], receiver.requests[-1]["headers"])
