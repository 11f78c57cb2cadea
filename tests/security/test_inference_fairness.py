"""Issue 13, item 7 through the real API and a real inference worker: the work of one
request is bounded (422), another tenant's small request completes while the largest
allowed request runs, and a request whose client disconnects stops on the worker."""

import json
import socket
import threading
import time

import httpx
import pytest

from service.settings import get_settings
from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer, wait_for

pytestmark = pytest.mark.slow
WORK_LIMIT = 4096  # tokens: prompts x n x max_tokens
LARGEST = {"model": "base:builtin:tiny", "prompts": [f"Story {i}:" for i in range(16)], "max_tokens": 256,
           "temperature": 0}  # greedy tiny never ends early: 16 x 256 = the limit


def raw_post(url: str, path: str, key: str, body: dict) -> socket.socket:
    """Send a request over a plain socket, so the test decides when the client goes away."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def answered(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


@pytest.mark.timeout(300)
def test_bounded_work_fair_tenants_and_abandoned_requests(pg_settings, tmp_path, monkeypatch, record):
    monkeypatch.setenv("AMFT_GENERATE_MAX_WORK_TOKENS", str(WORK_LIMIT))
    get_settings.cache_clear()
    settings = pg_settings.model_copy(update={"generate_max_work_tokens": WORK_LIMIT})
    try:
        with ApiServer(settings) as api, InferenceWorker(settings, tmp_path) as worker:
            alice, bob = api.key("alice"), api.key("bob")
            with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {alice}"}, timeout=180) as client:
                too_much = client.post("/generate", json={**LARGEST, "max_tokens": 257})
                v1 = client.post("/v1/completions", json={"model": "base:builtin:tiny", "prompt": ["a"] * 16, "max_tokens": 257})
                warm = client.post("/generate", json={**LARGEST, "max_tokens": 2})  # loads the engine
                assert warm.status_code == 200, worker.logs()
            assert too_much.status_code == 422 and f"limit of {WORK_LIMIT}" in too_much.json()["detail"]
            assert v1.status_code in (400, 422) and f"limit of {WORK_LIMIT}" in json.dumps(v1.json())
            record("13.7a", f"POST /generate and /v1/completions asking 16 x 1 x 257 tokens with a limit of {WORK_LIMIT}",
                   "refused with a 4xx naming the limit", f"/generate {too_much.status_code}: {too_much.json()['detail'][:120]}")

            large = raw_post(api.url, "/generate", alice, LARGEST)
            wait_for(lambda: "amft.inference.generate" in worker.logs(), 60, what="alice's task on the worker")
            started = time.monotonic()
            with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {bob}"}, timeout=180) as client:
                small = client.post("/generate", json={"model": "base:builtin:tiny", "prompts": ["Hi"], "max_tokens": 4})
            small_seconds = time.monotonic() - started
            assert small.status_code == 200, small.text
            still_running = not answered(large)
            assert still_running  # bob's answer came while alice's largest request was decoding
            record("13.7b", f"tenant alice runs the largest allowed request (16 prompts x 256 tokens); bob asks for 4 tokens",
                   "bob is served while alice's request runs", f"bob answered 200 in {small_seconds:.1f} s; alice's request still running: {still_running}")

            closed = time.monotonic()
            large.close()  # alice's client goes away
            wait_for(lambda: "abandoned by its caller" in worker.logs(), 60, interval=0.1, what="the worker to stop alice's rows")
            stop_seconds = time.monotonic() - closed
            record("13.7c", "alice's client disconnects while its largest allowed request decodes",
                   "the worker stops the rows within a second or two",
                   f"worker logged the request abandoned {stop_seconds:.1f} s after the disconnect (loaded 2-core machine)")
    finally:
        get_settings.cache_clear()
