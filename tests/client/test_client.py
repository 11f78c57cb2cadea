"""The Python client against a real API (PostgreSQL, Redis, real Celery train and inference workers),
and its retry behaviour against a real HTTP server that answers 429/503 first."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from client import ApiError, Client
from service.evaluations import EvaluationRequest
from service.specs import JobSpec
from tests.api.inference_env import InferenceWorker
from tests.conftest import TINY_SPEC

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_create_stream_wait_metrics_evaluate_generate_and_errors(pg_api, pg_workers, pg_settings, tmp_path):
    pg_workers.start()
    key, other = pg_api.key("alice"), pg_api.key("bob")
    # the inference worker starts while the job trains; it serves the evaluation and generate
    with InferenceWorker(pg_settings, tmp_path, concurrency=2) as inference, Client(pg_api.url, key) as amft:
        spec = JobSpec.model_validate({**TINY_SPEC, "training": {**TINY_SPEC["training"], "total_steps": 4}})
        job = amft.jobs.create(spec, idempotency_key="same")
        assert amft.jobs.create(spec, idempotency_key="same").id == job.id  # a retried create is the same job
        second = amft.jobs.create(spec)
        assert second.id != job.id  # a fresh automatic key is a new job
        cancelled = amft.jobs.cancel(second.id)  # queued behind the first: ends at once
        assert cancelled.status == "cancelled" or cancelled.cancel_requested
        steps = [m["data"]["step"] for m in amft.jobs.events(job.id, stream=True) if m["event"] == "metrics"]
        assert steps == [1, 2, 3, 4]
        final = amft.jobs.wait(job.id, timeout=200)
        assert final.status == "succeeded" and final.progress.step == 4
        points = amft.jobs.metrics(job.id, names=["mu", "reward_mean"])
        assert [p["step"] for p in points] == [1, 2, 3, 4] and all("mu" in p for p in points)
        assert [c["step"] for c in amft.jobs.checkpoints(job.id)][-1] == 4
        assert "created" in [e["kind"] for e in amft.jobs.events(job.id)]
        assert job.id in {j.id for j in amft.jobs.iter()}

        request = EvaluationRequest.model_validate({"step": 4, "limit": 3, "sampling": {"max_tokens": 8, "temperature": 0}})
        evaluation = amft.evaluations.create(job.id, request)
        assert evaluation["step"] == 4 and evaluation["status"] not in ("succeeded", "failed")
        done = amft.evaluations.wait(job.id, evaluation["id"], timeout=200, poll=0.3)
        assert done["status"] == "succeeded", str(done.get("error")) + inference.logs()
        assert done["total"] == 3 and done["correct"] == sum(item["correct"] for item in done["items"])
        assert amft.evaluations.get(job.id, evaluation["id"])["items"] == done["items"]
        assert [e["id"] for e in amft.evaluations.list(job.id)] == [evaluation["id"]]
        answer = amft.generate(f"{job.id}:4", ["2+2="], max_tokens=4, temperature=0)
        assert answer["model"] == f"{job.id}:4" and isinstance(answer["results"][0]["completions"][0]["text"], str)
        data = tmp_path / "train.jsonl"
        data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
        assert amft.files.upload(data)["source"].startswith("file:")
        with pytest.raises(ApiError) as invalid:
            amft.jobs.create({"method": "amft", "training": {"total_steps": 0}})
        assert invalid.value.status == 422 and any("training.total_steps" in p for p in invalid.value.problems)
    with Client(pg_api.url, other) as bob, pytest.raises(ApiError) as hidden:
        bob.jobs.get(job.id)
    assert hidden.value.status == 404 and "no job" in hidden.value.detail
    with Client(pg_api.url, "amft_wrong") as stranger, pytest.raises(ApiError) as refused:
        stranger.jobs.list()
    assert refused.value.status == 401


class Flaky(BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) then 429, then 200; counts the requests (and keeps each
    request's body, read in full as a server does, in `bodies`)."""

    answers = [(503, {"Retry-After": "0"}), (429, {}), (200, {})]
    seen: list[str] = []
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.do_GET()

    def do_GET(self):  # noqa: N802 (http.server's name)
        status, headers = self.answers[min(len(self.seen), 2)]
        self.seen.append(self.path)
        ok = {"source": "file:" + "a" * 32} if self.command == "POST" else {"jobs": [], "next_cursor": None}
        body = json.dumps(ok if status == 200 else {"detail": "busy; retry", "problems": ["busy; retry"]}).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def test_retries_429_and_503_then_gives_the_servers_message(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        Flaky.seen = []
        with Client(url, "k") as amft:
            amft._t.backoff = 0.01
            assert amft.jobs.list().jobs == []
        assert len(Flaky.seen) == 3
        Flaky.seen = []
        with Client(url, "k", retries=1) as amft, pytest.raises(ApiError) as error:
            amft._t.backoff = 0.01
            amft.jobs.list()
        assert error.value.status == 429 and error.value.detail == "busy; retry" and len(Flaky.seen) == 2

        data = tmp_path / "train.jsonl"  # an upload streams the file: each attempt sends all of it again
        data.write_bytes(b"".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}).encode() + b"\n"
                                  for i in range(5_000)))
        Flaky.seen, Flaky.bodies = [], []
        with Client(url, "k") as amft:
            amft._t.backoff = 0.01
            assert amft.files.upload(data)["source"] == "file:" + "a" * 32
        assert len(Flaky.seen) == 3 and Flaky.bodies == [data.read_bytes()] * 3
        Flaky.seen = []
        with Client(url, "k", retries=1) as amft, pytest.raises(ApiError) as error:
            amft._t.backoff = 0.01
            amft.files.upload(data)
        assert error.value.status == 429 and len(Flaky.seen) == 2
    finally:
        server.shutdown()
