"""`amft serve`, `amft keys` and `amft demo` as a user runs them, on the embedded default."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, wait_for
from tests.serve_process import Serve, alive, amft, amft_env, readyz, worker_pids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_serve_keys_and_ctrl_c(tmp_path):
    serve = Serve(tmp_path)
    try:
        serve.wait_ready(60)
        key = serve.key("me")
        assert key.startswith("amft_")
        with serve.client(key) as client:
            assert client.get("/jobs").json() == {"jobs": [], "next_cursor": None}
        serve.proc.send_signal(signal.SIGINT)  # Ctrl-C
        serve.proc.wait(timeout=90)
        assert serve.proc.returncode == 0, serve.output()
        assert "amft serve: stopped" in serve.output()
        assert (tmp_path / "home" / "amft.db").exists() and (tmp_path / "home" / "broker.db").exists()
    finally:
        serve.close()


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


def test_13_12_kill_9_of_serve_leaves_no_orphan_workers(tmp_path, record):
    serve = Serve(tmp_path, SUPERVISION_ENV)
    try:
        ready = serve.wait_ready()
        assert ready["checks"]["worker:train"] == "ok" and ready["checks"]["worker:inference"] == "ok", ready
        mains = worker_pids(serve.log)
        assert set(mains) == {"train", "inference"}, serve.log.read_text()
        pool = wait_for(lambda: _children(mains["train"]), 60, what="the train worker's pool child")
        pids = [*mains.values(), *pool]
        os.kill(serve.proc.pid, signal.SIGKILL)
        serve.proc.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in pids), 120, what=f"the workers {pids} to exit")
    finally:
        serve.close()  # also kills any worker left behind if the test failed
    record("13.12-orphans", "kill -9 of `amft serve` with its train worker (and pool child) and inference worker up",
           "no worker outlives it (PR_SET_PDEATHSIG)",
           f"all {len(pids)} worker processes (2 Celery main processes, {len(pool)} pool child) exited; none orphaned")


def test_13_12_dead_train_worker_is_restarted_and_readyz_follows(tmp_path, record):
    from service.auth import create_key
    from service.db import get_database
    from tests.conftest import TINY_SPEC

    serve = Serve(tmp_path, SUPERVISION_ENV)
    try:
        serve.wait_ready()
        train = worker_pids(serve.log)["train"]
        # A frozen worker (no heartbeat) makes /readyz say which queue is unserved; thawed, ready again.
        os.killpg(train, signal.SIGSTOP)
        try:
            down = wait_for(lambda: (r := readyz(serve.url))[0] == 503 and r[1], 60, interval=0.5,
                            what="/readyz to report the train queue unserved")
        finally:
            os.killpg(train, signal.SIGCONT)
        assert down["checks"]["worker:train"].startswith("no live worker"), down
        assert down["checks"]["worker:inference"] == "ok", down
        serve.wait_ready(60)
        # kill -9 of the train worker: logged, restarted with a new pid, its pool child gone too.
        pool = wait_for(lambda: _children(train), 60, what="the train worker's pool child")
        os.kill(train, signal.SIGKILL)
        wait_for(lambda: worker_pids(serve.log)["train"] != train, 60,
                 what=f"a restarted train worker; output:\n{serve.log.read_text()[-3000:]}")
        assert f"train worker (pid {train}) exited with signal SIGKILL; restarting in" in serve.log.read_text()
        wait_for(lambda: not any(alive(pid) for pid in pool), 60, what="the killed worker's pool child to exit")
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
