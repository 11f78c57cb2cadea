"""The `ray` launcher (issue 14): one job across several machines with Ray Train.

The Celery worker that claimed the job starts a Ray *driver* as its child process group
(`python -m workers.ray_launcher LAUNCH_FILE`, see workers.launchers.run_group), exactly
as it starts torchrun: the worker keeps the lease, relays cancel and SIGTERM through the
stop file, and kills the group when the attempt is fenced. The driver connects to the
existing cluster (AMFT_RAY_ADDRESS) and runs Ray Train's `TorchTrainer` with
nodes x devices workers, which Ray places and gang-schedules as one placement group and
joins into one torch process group (NCCL on CUDA, gloo on CPU) with the collective timeout
AMFT_COLLECTIVE_TIMEOUT_SECONDS. Every Ray worker runs the same per-rank entry as torchrun
(workers.rank_main.run_rank). Killing the driver ends the run: the Train controller and its
workers are non-detached actors of the driver's Ray job, so Ray kills them with it.

Every node must see the artifacts folder at the same path (shared storage: the launch
folder's stop and exit files, checkpoints), reach the database, and run this code at the
same path (one image), as a torchrun node does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

from service.settings import get_settings
from service.specs import JobSpec

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def driver_command() -> list[str]:
    """The driver's command line, without the launch file the launcher appends."""
    return [sys.executable, "-m", "workers.ray_launcher"]


def worker_env() -> dict[str, str]:
    """What every Ray worker process needs to run this code as the Celery worker would:
    the deployment's AMFT_* settings and this code on the import path."""
    env = {name: value for name, value in os.environ.items() if name.startswith("AMFT_")}
    return {**env, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def rank_entry(config: dict) -> None:
    """One Ray Train worker: the torchrun rank's entry, with Ray's rank.

    Ray Train has already initialised the process group; the loop's make_world finds it.
    Failures are left as error-rank files for the Celery worker, as under torchrun.
    """
    import ray
    import ray.train

    from workers.rank_main import run_rank

    context = ray.train.get_context()
    rank, launch = context.get_world_rank(), Path(config["launch"])
    os.environ["LOCAL_RANK"] = str(context.get_local_rank())  # Sharded.device picks the GPU by it
    (launch.parent / f"node-rank{rank}.json").write_text(json.dumps(  # where Ray placed it, for operators
        {"node_id": ray.get_runtime_context().get_node_id(), "node_rank": context.get_node_rank()}))
    os.chdir(config["root"])  # Ray Train moved us into its run folder; relative settings are the service's
    run_rank(launch, rank)


def placement(spec: JobSpec, on_gpu: bool) -> dict:
    """ScalingConfig arguments: one worker per device of every node. PACK fills a node's
    devices before the next node, so a cluster of `devices`-GPU nodes gets `nodes` full
    nodes (NCCL's fast intra-node links), and Ray gang-schedules all workers or none."""
    r = spec.resources
    per_worker = {"GPU": 1, "CPU": 1} if on_gpu else {"CPU": 1}
    return {"num_workers": r.world_size, "use_gpu": on_gpu, "resources_per_worker": per_worker,
            "placement_strategy": "PACK"}


def main(launch_file: Path) -> int:
    """The Ray Train driver of one attempt; returns 0 when the trainer ran to its end."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    settings = get_settings()
    launch = json.loads(launch_file.read_text())
    spec = JobSpec.model_validate(launch["claim"]["spec"])
    ray.init(address=settings.ray_address, runtime_env={"env_vars": worker_env()}, log_to_driver=True)
    device = spec.training.device
    on_gpu = device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    trainer = TorchTrainer(
        rank_entry,
        train_loop_config={"launch": str(launch_file), "root": str(ROOT)},
        scaling_config=ScalingConfig(**placement(spec, on_gpu)),
        torch_config=TorchConfig(backend="nccl" if on_gpu else "gloo",
                                 timeout_s=int(settings.collective_timeout_seconds)),
        # The service resumes a job from its own checkpoints, on a new attempt: Ray retries nothing.
        run_config=RunConfig(name="ray-train", storage_path=str(launch_file.parent),
                             failure_config=FailureConfig(max_failures=0, max_preemption_failures=0)),
    )
    ended = threading.Event()
    threading.Thread(target=stop_while_unplaced, args=(launch_file.parent, launch, ended), daemon=True).start()
    try:
        trainer.fit()
    except Exception:  # noqa: BLE001 - a worker died; the launcher reads the ranks' files
        log.exception("the Ray Train run ended with an error")
        return 1
    finally:
        ended.set()
        ray.shutdown()
    return 0


def stop_while_unplaced(folder: Path, launch: dict, done: threading.Event) -> None:
    """Cancel and shutdown reach rank 0 through the stop file, but while Ray waits for the
    cluster to place the workers (it is busy, or too small: Ray waits for it to grow) no
    rank reads it. Then the run ends here, as a stop at the step it resumed from."""
    while not done.wait(0.5):
        if (folder / "stop").exists() and not (folder / "pid-rank0").exists():
            (folder / "exit-rank0.json").write_text(json.dumps(
                {"rank": 0, "status": "stopped", "last_step": launch["claim"]["resume_step"],
                 "last_checkpoint": launch["resume"]}))
            log.info("stopped before Ray placed the workers; ending the run")
            # The controller may sit in a blocking placement wait and not serve abort();
            # the driver's exit ends its Ray job, whose actors and placement group go with it.
            os._exit(0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    # Import the module by name so Ray pickles rank_entry by reference, not as __main__.
    from workers.ray_launcher import main as run_driver

    sys.exit(run_driver(Path(sys.argv[1])))
