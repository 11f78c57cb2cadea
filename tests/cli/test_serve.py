"""`amft serve`, `amft keys` and `amft demo` as a user runs them, on the embedded default."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def amft_env(tmp_path) -> tuple[dict, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMFT_")}
    return {**env, "AMFT_HOME": str(tmp_path / "home"), "AMFT_API_PORT": str(port)}, port


def amft(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def test_serve_keys_and_ctrl_c(tmp_path):
    env, port = amft_env(tmp_path)
    serve = subprocess.Popen(amft("serve"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, what="amft serve to be ready")
        key = subprocess.run(amft("keys", "create", "--tenant", "me"), cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert key.startswith("amft_")
        assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {key}"}).json() == {"jobs": [], "next_cursor": None}
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = serve.communicate(timeout=90)
        assert serve.returncode == 0, output
        assert "amft serve: stopped" in output
        assert (tmp_path / "home" / "amft.db").exists() and (tmp_path / "home" / "broker.db").exists()
    finally:
        if serve.poll() is None:
            serve.kill()


def test_demo_trains_and_streams(tmp_path):
    env, port = amft_env(tmp_path)
    demo = subprocess.run(amft("demo", "--steps", "4"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert any(line.startswith(f"dashboard: http://127.0.0.1:{port}/ui/") for line in lines), demo.stdout
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["1/4", "2/4", "3/4", "4/4"]
    assert any("mu" in line and "ETA" in line for line in lines)
    assert any(line.strip().startswith("checkpoint step 4:") for line in lines)
    assert any(line.endswith("succeeded") for line in lines)


# Issue 13, item 12: supervised workers. Short heartbeats so /readyz notices in seconds.
SUPERVISION_ENV = {"AMFT_WORKER_HEARTBEAT_SECONDS": "0.5", "AMFT_WORKER_STALE_SECONDS": "3"}


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its new parent has not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _worker_pids(log: Path) -> dict[str, int]:
    """The newest pid `amft serve` printed for each worker."""
    pids = {}
    for line in log.read_text().splitlines():
        if match := re.match(r"amft serve: (\w+) worker pid (\d+)", line):
            pids[match.group(1)] = int(match.group(2))
    return pids


def _readyz(url: str) -> tuple[int, dict]:
    try:
        response = httpx.get(f"{url}/readyz", timeout=5)
        return response.status_code, response.json()
    except (httpx.HTTPError, ValueError):
        return 0, {}


class Serve:
    """`amft serve` as a subprocess, its output in a file (read while it runs)."""

    def __init__(self, tmp_path: Path):
        env, self.port = amft_env(tmp_path)
        self.env = {**env, **SUPERVISION_ENV}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.out"
        self.proc = subprocess.Popen(amft("serve"), cwd=ROOT, env=self.env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> dict:
        return wait_for(lambda: (r := _readyz(self.url))[0] == 200 and r[1], timeout, interval=0.5,
                        what=f"amft serve to be ready; output:\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_13_12_kill_9_of_serve_leaves_no_orphan_workers(tmp_path, record):
    serve = Serve(tmp_path)
    try:
        ready = serve.wait_ready()
        assert ready["checks"]["worker:train"] == "ok" and ready["checks"]["worker:inference"] == "ok", ready
        mains = _worker_pids(serve.log)
        assert set(mains) == {"train", "inference"}, serve.log.read_text()
        pool = wait_for(lambda: _children(mains["train"]), 60, what="the train worker's pool child")
        pids = [*mains.values(), *pool]
        os.kill(serve.proc.pid, signal.SIGKILL)
        serve.proc.wait(timeout=30)
        wait_for(lambda: not any(_alive(pid) for pid in pids), 120, what=f"the workers {pids} to exit")
    finally:
        serve.close()
        for pid in [*_worker_pids(serve.log).values()]:  # never leave one behind if the test failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    record("13.12-orphans", "kill -9 of `amft serve` with its train worker (and pool child) and inference worker up",
           "no worker outlives it (PR_SET_PDEATHSIG)",
           f"all {len(pids)} worker processes (2 Celery main processes, {len(pool)} pool child) exited; none orphaned")


def test_13_12_dead_train_worker_is_restarted_and_readyz_follows(tmp_path, record):
    from service.auth import create_key
    from service.db import get_database
    from tests.conftest import TINY_SPEC

    serve = Serve(tmp_path)
    try:
        serve.wait_ready()
        train = _worker_pids(serve.log)["train"]
        # A frozen worker (no heartbeat) makes /readyz say which queue is unserved; thawed, ready again.
        os.killpg(train, signal.SIGSTOP)
        try:
            down = wait_for(lambda: (r := _readyz(serve.url))[0] == 503 and r[1], 60, interval=0.5,
                            what="/readyz to report the train queue unserved")
        finally:
            os.killpg(train, signal.SIGCONT)
        assert down["checks"]["worker:train"].startswith("no live worker"), down
        assert down["checks"]["worker:inference"] == "ok", down
        serve.wait_ready(60)
        # kill -9 of the train worker: logged, restarted with a new pid, its pool child gone too.
        pool = wait_for(lambda: _children(train), 60, what="the train worker's pool child")
        os.kill(train, signal.SIGKILL)
        wait_for(lambda: _worker_pids(serve.log)["train"] != train, 60,
                 what=f"a restarted train worker; output:\n{serve.log.read_text()[-3000:]}")
        assert f"train worker (pid {train}) exited with signal SIGKILL; restarting in" in serve.log.read_text()
        wait_for(lambda: not any(_alive(pid) for pid in pool), 60, what="the killed worker's pool child to exit")
        serve.wait_ready(120)
        # ... and a job still runs to success on the restarted worker.
        key = create_key(get_database(f"sqlite:///{tmp_path / 'home' / 'amft.db'}"), "me")[0]
        spec = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "total_steps": 4, "save_every": 2}}
        with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            job_id = client.post("/jobs", json=spec).json()["id"]
            job = wait_for(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
                           and j, 300, interval=1, what="the job on the restarted worker")
        assert job["status"] == "succeeded", job
    finally:
        serve.close()
    assert serve.proc.returncode == 0
    record("13.12-restart", "SIGSTOP the train worker of `amft serve` for a while, SIGCONT; then kill -9 it; "
           "then submit a job", "/readyz 503 naming the unserved queue while frozen, 200 after; the dead worker "
           "logged and restarted with backoff, its pool child gone; the job succeeds",
           f"/readyz 503 with worker:train '{down['checks']['worker:train']}' (inference ok), 200 after SIGCONT; "
           f"restart logged, new pid, pool child exited; /readyz 200; job {job['status']} on the new worker")
