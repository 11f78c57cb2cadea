"""`amft jobs ...` and `amft files upload` as a user runs them against a real service
(API, PostgreSQL, Redis, a real train worker and a real inference worker)."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import yaml

from tests.api.inference_env import InferenceWorker
from tests.conftest import ROOT, TINY_SPEC

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def amft_jobs(api, key, *args, timeout=240) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AMFT_")}, "AMFT_URL": api.url, "AMFT_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "cli.main", "jobs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submit_watch_metrics_generate_upload_and_a_failing_job(pg_api, pg_workers, pg_settings, tmp_path):
    pg_workers.start()
    key = pg_api.key("alice")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**TINY_SPEC, "training": {**TINY_SPEC["training"], "total_steps": 4}}))
    with InferenceWorker(pg_settings, tmp_path) as inference:
        submitted = amft_jobs(pg_api, key, "submit", str(spec_path), "--watch")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr + pg_workers.logs()
        job_id = submitted.stdout.splitlines()[0].strip()
        assert len(job_id) == 32 and "succeeded" in submitted.stdout
        assert "4/4" in submitted.stdout and "mu" in submitted.stdout  # the progress bar's last frame

        listed = amft_jobs(pg_api, key, "list")
        assert job_id in listed.stdout and "succeeded" in listed.stdout
        shown = json.loads(amft_jobs(pg_api, key, "show", job_id).stdout)
        assert shown["status"] == "succeeded" and shown["progress"]["step"] == 4

        table = amft_jobs(pg_api, key, "metrics", job_id, "--csv")
        rows = list(csv.DictReader(io.StringIO(table.stdout)))
        assert [row["step"] for row in rows] == ["1", "2", "3", "4"]
        assert all(float(row["mu"]) >= 0 for row in rows) and "reward_mean" in rows[0]

        generated = amft_jobs(pg_api, key, "generate", f"{job_id}:4", "Tom has 3 apples. How many?",
                              "--max-tokens", "8")
        assert generated.returncode == 0, generated.stderr + inference.logs()
        assert f"{job_id}:4" in generated.stderr

        logs = amft_jobs(pg_api, key, "logs", job_id)
        assert "created" in logs.stdout and "started" in logs.stdout

    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(5)))
    uploaded = amft_jobs(pg_api, key, "files", "upload", str(data))
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.strip().startswith("file:")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    refused = amft_jobs(pg_api, key, "files", "upload", str(bad))
    assert refused.returncode == 1 and "bad.jsonl" in refused.stderr

    failing = tmp_path / "failing.yaml"  # valid spec; the model folder does not exist, so the run fails
    failing.write_text(yaml.safe_dump({**TINY_SPEC, "model": "local:no-such-model"}))
    failed = amft_jobs(pg_api, key, "submit", str(failing), "--watch")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stdout

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(yaml.safe_dump({"method": "amft", "training": {"total_steps": 0}}))
    rejected = amft_jobs(pg_api, key, "submit", str(invalid))
    assert rejected.returncode == 1 and "training.total_steps" in rejected.stderr
    assert amft_jobs(pg_api, "amft_wrong", "list").returncode == 1


class GoneMidStream(BaseHTTPRequestHandler):
    """A service that goes away under a watcher: GET /jobs/{id} answers a running job, and its
    event stream promises a body, then the connection drops (every time it is reopened)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.split("?")[0].endswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b": ping\n\n")
            return  # HTTP/1.0: the connection closes 992 bytes short
        body = json.dumps({"id": "a" * 32, "status": "running", "progress": {"step": 1, "total_steps": 4}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def test_watch_exits_3_on_cancelled_and_4_without_a_traceback_when_the_service_is_gone(pg_api, tmp_path):
    key = pg_api.key("alice")
    with pg_api.client(key) as client:  # no worker: the queued job is cancelled at once
        job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]
        assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    cancelled = amft_jobs(pg_api, key, "watch", job_id)
    assert cancelled.returncode == 3, cancelled.stdout + cancelled.stderr
    assert "cancelled" in cancelled.stdout

    server = ThreadingHTTPServer(("127.0.0.1", 0), GoneMidStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gone = SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}")
        dropped = amft_jobs(gone, key, "--retries", "1", "watch", "a" * 32)
    finally:
        server.shutdown()
    assert f"job {'a' * 32}" in dropped.stdout  # it got the job: the stream is what dropped
    assert dropped.returncode == 4 and "Traceback" not in dropped.stderr, dropped.stderr
    assert dropped.stderr.strip().startswith("amft jobs watch: cannot reach the service")
    assert len(dropped.stderr.strip().splitlines()) == 1

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        nobody = SimpleNamespace(url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    upload = amft_jobs(nobody, key, "--retries", "0", "files", "upload", str(data))
    assert upload.returncode == 4 and "Traceback" not in upload.stderr, upload.stderr
    assert len(upload.stderr.strip().splitlines()) == 1 and "cannot reach the service" in upload.stderr
