"""How a claimed job's trainer is started (issue 14): one launcher, chosen once at claim time.

- `local`: the loop in this worker process (resources 1 device x 1 node), as before;
- `torchrun`: one node, N devices. This worker starts `torch.distributed.run` as a child
  process group running workers.rank_main, keeps heartbeating the lease (the Watch thread),
  relays cancel and SIGTERM as a stop file that rank 0 turns into a collective stop, and
  tears the whole group down when it ends, when any rank dies (torchrun's agent stops the
  others; collectives time out after AMFT_COLLECTIVE_TIMEOUT_SECONDS) or when fenced;
- `ray`: more than one node, on the Ray cluster named by AMFT_RAY_ADDRESS (workers.ray_launcher):
  the same child process group, whose child is a Ray Train driver instead of torchrun; a
  worker without AMFT_RAY_ADDRESS declines such a job.

A launcher returns the TrainResult, or None when the group died without finishing (a rank
was killed): the caller then releases the job, which resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from service.errors import Fenced
from service.settings import Settings
from service.specs import JobSpec
from workers.trainer.hooks import TrainResult

ROOT = Path(__file__).resolve().parents[1]
Launcher = Callable[[JobSpec, Path, object, Path | None], "TrainResult | None"]


class Unservable(Exception):
    """This worker cannot give the job the resources it asks for; it declines the job."""


class RanksFailed(RuntimeError):
    """A rank raised: the job fails with the first rank's message."""


def choose_launcher(spec: JobSpec, settings: Settings) -> str:
    """`local`, `torchrun` or `ray` for this job on this worker; raises Unservable."""
    r = spec.resources
    if r.nodes > 1:
        if not settings.ray_address:
            raise Unservable(f"resources.nodes = {r.nodes} but this worker has no Ray cluster (AMFT_RAY_ADDRESS) "
                             "to run a multi-node job on")
        return "ray"  # the Ray cluster, not this worker, provides the devices
    if r.devices > settings.worker_devices:
        raise Unservable(f"resources.devices = {r.devices} but this worker serves {settings.worker_devices} "
                         f"(AMFT_WORKER_DEVICES); it will not run the job smaller")
    return "local" if r.devices == 1 else "torchrun"


def launch_dir(job_dir: Path, attempt: int) -> Path:
    return job_dir / "launch" / f"attempt-{attempt}"


def write_launch_file(folder: Path, held, job_dir: Path, resume: Path | None) -> Path:
    """What every rank needs: the claim (for rank 0's fenced writes), where to write and resume."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "launch.json"
    path.write_text(json.dumps({"claim": dataclasses.asdict(held), "job_dir": str(job_dir),
                                "resume": str(resume) if resume else None}))
    return path


def run_torchrun(spec: JobSpec, job_dir: Path, watch, resume: Path | None, settings: Settings) -> TrainResult | None:
    """Run the job as `torchrun --nproc-per-node N` in a child process group and wait for it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec.resources.devices}",
               "--max-restarts=0", "-m", "workers.rank_main"]
    return run_group(command, "torchrun.log", job_dir, watch, resume)


def run_ray(spec: JobSpec, job_dir: Path, watch, resume: Path | None, settings: Settings) -> TrainResult | None:
    """Run the job with Ray Train on the cluster at AMFT_RAY_ADDRESS (workers.ray_launcher)."""
    from workers.ray_launcher import driver_command

    return run_group(driver_command(), "ray.log", job_dir, watch, resume)


GROUP_LAUNCHERS = {"torchrun": run_torchrun, "ray": run_ray}


def run_group(command: list[str], log_name: str, job_dir: Path, watch, resume: Path | None) -> TrainResult | None:
    """Run `command LAUNCH_FILE` as a child process group while this worker keeps the lease,
    relays cancel and SIGTERM, and tears the group down when it ends or when fenced."""
    folder = launch_dir(job_dir, watch.held.attempt)
    launch = write_launch_file(folder, watch.held, job_dir, resume)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with (folder / log_name).open("w") as log:
        group = subprocess.Popen([*command, str(launch)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            _supervise(group, watch, folder / "stop")
        finally:
            _tear_down(group)
    return _outcome(folder, watch)


def _supervise(group: subprocess.Popen, watch, stop_file: Path) -> None:
    """Wait for the group; relay cancel/SIGTERM as the stop file; kill it at once if fenced."""
    from workers.train_job import SHUTTING_DOWN

    while group.poll() is None:
        if watch.fenced:
            return
        if (watch.cancel or SHUTTING_DOWN.is_set()) and not stop_file.exists():
            stop_file.touch()
        time.sleep(0.2)


def _tear_down(group: subprocess.Popen, grace_seconds: float = 10.0) -> None:
    """SIGTERM the whole process group (agent and ranks), SIGKILL what is left after the grace."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(group.pid, sig)
        except ProcessLookupError:
            break
        try:
            group.wait(timeout=wait)
            deadline = time.monotonic() + wait  # ranks may outlive the agent briefly
            while _group_alive(group.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _group_alive(group.pid):
                break
        except subprocess.TimeoutExpired:
            continue


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


PEER_LOST_KINDS = {"DistBackendError", "DistNetworkError", "DistStoreError", "DistError"}


def _peer_lost(error: dict) -> bool:
    message = error["message"].lower()
    return error["kind"] in PEER_LOST_KINDS or any(
        sign in message for sign in ("connection closed by peer", "connection reset", "gloo", "nccl", "broken pipe"))


def _outcome(folder: Path, watch) -> TrainResult | None:
    if watch.fenced:
        raise Fenced(f"job {watch.held.job_id} attempt {watch.held.attempt} lost its lease")
    errors = [json.loads(path.read_text()) for path in sorted(folder.glob("error-rank*.json"))]
    # When a rank dies its peers' next collective fails ("Connection closed by peer"):
    # that is a consequence, not the job's fault, so only other errors fail the job.
    errors = [e for e in errors if not _peer_lost(e)]
    if errors:
        first = errors[0]
        if first["kind"] == "Fenced":
            raise Fenced(first["message"])
        raise RanksFailed(f"rank {first['rank']}: {first['message']}")
    exit_file = folder / "exit-rank0.json"
    if not exit_file.is_file():
        return None  # a rank died (killed, out of memory): resume from the last checkpoint
    done = json.loads(exit_file.read_text())
    checkpoint = Path(done["last_checkpoint"]) if done["last_checkpoint"] else None
    return TrainResult(done["status"], done["last_step"], checkpoint)
