"""Issue 14, multi-node: a two-node Ray cluster on this machine (two raylets, one CPU each)
runs a resources.nodes = 2 job through the service: POST /jobs, a real Celery worker with
AMFT_RAY_ADDRESS, Ray Train's TorchTrainer with 2 gloo ranks, PostgreSQL + Redis, through a
kill -9 of one rank (released, resumed); and a cancel reaches a job that Ray is still
waiting to place. One cluster serves the module (starting a Ray node takes tens of
seconds on 2 loaded cores)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from service.settings import get_settings
from tests.conftest import wait_for
from tests.workers.test_distributed_jobs import launch_folder
from tests.workers.test_tasks import all_points, submit, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TWO_NODE_SPEC = {
    "method": "amft",
    "model": "builtin:tiny",
    "resources": {"devices": 1, "nodes": 2},
    "training": {"total_steps": 6, "warmup_steps": 2, "save_every": 3, "sft_batch_size": 2, "rl_prompts_per_step": 2,
                 "num_generations": 2, "max_completion_tokens": 12, "device": "cpu"},
    "controller": {"meta_interval": 3, "meta_val_prompts": 2},
}
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayCluster:
    """`ray start --head` and one `ray start --address` on loopback, every port a free one
    (never 6379: other tests share this machine's Redis), in a private temp dir.

    Stopping kills only this cluster's processes: those whose command line names its temp
    dir (GCS, raylets, agents) and their descendants (the workers), never `ray stop`,
    which would stop every Ray cluster of this user.
    """

    def start(self, tries: int = 3) -> None:
        """Start both nodes; again from scratch if `ray start` gave up (it waits a fixed 30 s
        for a raylet to register, which a loaded 2-core machine can exceed)."""
        for _ in range(tries):
            # Short: Ray's Unix socket paths under it must stay below 108 bytes.
            self.temp_dir = Path(tempfile.mkdtemp(prefix="amftray", dir="/tmp"))
            self.address = f"127.0.0.1:{free_port()}"
            head = ["--head", f"--port={self.address.split(':')[1]}", f"--temp-dir={self.temp_dir}",
                    "--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
            if self._node(head) and self._node([f"--address={self.address}"]):
                return
            self.stop()
        raise AssertionError(f"could not start a two-node Ray cluster in {tries} tries:\n{self.failure}")

    def _node(self, role: list[str]) -> bool:
        ports = {name: free_port() for name in ("node-manager-port", "object-manager-port", "dashboard-agent-grpc-port",
                                                 "dashboard-agent-listen-port", "runtime-env-agent-port",
                                                 "metrics-export-port")}
        command = [RAY, "start", *role, "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1",
                   "--object-store-memory=100000000", "--disable-usage-stats",
                   *(f"--{name}={port}" for name, port in ports.items())]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        self.failure = (done.stdout + done.stderr)[-3000:]
        return done.returncode == 0

    def processes(self) -> list[psutil.Process]:
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.temp_dir) in " ".join(proc.info["cmdline"] or ()):
                mine.append(proc)
                try:
                    mine.extend(proc.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
        return list({p.pid: p for p in mine}.values())

    def stop(self) -> None:
        procs = self.processes()
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for proc in procs:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _gone, procs = psutil.wait_procs(procs, timeout=grace)
            if not procs:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster() -> RayCluster:
    cluster = RayCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_settings(pg_settings, ray_cluster, monkeypatch):
    """The conftest's settings, with this cluster and two nodes allowed (also for the
    spec's validation in this process, which reads the process-wide settings)."""
    monkeypatch.setenv("AMFT_MAX_NODES", "2")
    get_settings.cache_clear()
    yield pg_settings.model_copy(update={"max_nodes": 2, "ray_address": ray_cluster.address})
    monkeypatch.delenv("AMFT_MAX_NODES")
    get_settings.cache_clear()


def test_two_node_job_runs_to_success_through_a_killed_rank(pg_api, pg_workers, ray_cluster):
    """One job, to save a Ray run: attempt 1 runs on both nodes until rank 1 is killed
    (kill -9) after the step-3 checkpoint; the attempt is released, attempt 2 resumes from
    step 3 on a new Ray run and succeeds, with every step's metrics exactly once."""
    pg_workers.start(extra_env={"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, TWO_NODE_SPEC)
        wait_for(lambda: client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
                 and client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 4, 600, interval=0.1,
                 what="a checkpoint and step 4")
        os.kill(int((launch_folder(pg_api.settings, job_id, 1) / "pid-rank1").read_text()), signal.SIGKILL)
        job = wait_status(client, job_id, ("succeeded", "failed"), timeout=800)
        folder = launch_folder(pg_api.settings, job_id, 2)
        ray_log = (folder / "ray.log").read_text()[-4000:] if (folder / "ray.log").exists() else ""
        assert job["status"] == "succeeded", (job, pg_workers.logs(), ray_log)
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
        assert [e["kind"] for e in events].count("started") == 2 and "released" in [e["kind"] for e in events]
        assert "resuming from step 3" in [e for e in events if e["kind"] == "started"][-1]["message"]
        assert [p["step"] for p in all_points(client, job_id)] == list(range(1, 7))  # each step exactly once
        assert [c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]] == [3, 6]
        assert {json.loads((folder / f"exit-rank{r}.json").read_text())["status"] for r in (0, 1)} == {"completed"}
        nodes = {json.loads((folder / f"node-rank{r}.json").read_text())["node_id"] for r in (0, 1)}
        assert len(nodes) == 2, "Ray placed both ranks on one node"


def test_cancel_while_ray_waits_to_place_the_workers(pg_api, pg_workers, ray_cluster):
    """4 workers on a 2-CPU cluster: Ray waits for resources (no rank runs to read the stop
    file); the cancel still ends the run and the job is cancelled, having run nothing."""
    too_big = {**TWO_NODE_SPEC, "resources": {"devices": 2, "nodes": 2},
               "training": {**TWO_NODE_SPEC["training"], "sft_batch_size": 4, "rl_prompts_per_step": 4},
               "controller": {"meta_interval": 3, "meta_val_prompts": 4}}
    pg_workers.start()
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, too_big)
        log = launch_folder(pg_api.settings, job_id, 1) / "ray.log"
        wait_for(lambda: log.exists() and "Attempting to start training worker group" in log.read_text(), 300,
                 interval=1, what="Ray waiting to place 4 workers")
        assert client.post(f"/jobs/{job_id}/cancel").json()["cancel_requested"] is True
        job = wait_status(client, job_id, ("cancelled", "failed", "succeeded"), timeout=120)
        assert job["status"] == "cancelled", (job, pg_workers.logs(), log.read_text()[-3000:])
        assert not list(log.parent.glob("pid-rank*"))  # no rank ever started
        assert client.get(f"/jobs/{job_id}/metrics").json()["points"] == []
