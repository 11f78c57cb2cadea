"""One rank of a multi-device job, as torchrun starts it (`python -m workers.rank_main CLAIM_JSON`)
or as a Ray Train worker runs it (workers.ray_launcher.rank_entry).

The Celery worker that claimed the job (workers.launchers) owns the lease: it heartbeats,
watches the cancel flag and SIGTERM, and ends the job. Here every rank runs the same loop;
only rank 0 builds hooks that write, through the same fenced lifecycle calls as the
in-process path (so a superseded attempt's rank 0 is refused), and only rank 0 opens the
database. Rank 0 also stops the group when the worker drops a stop file (cancel, shutdown).
Each rank leaves `exit-rank<r>.json` (how it ended) or `error-rank<r>.json` (what it raised).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from service.settings import get_settings
from service.specs import JobSpec


def rank_zero_hooks(claim: dict, launch_dir: Path):
    """Hooks that record metrics and checkpoints fenced by this attempt, and stop on the file."""
    from service import lifecycle
    from service.db import get_database
    from workers.train_job import Watch, retry_seconds

    settings = get_settings()
    held = lifecycle.Claim(**claim)
    watch = Watch(get_database(settings.resolved_database_url), held, settings.resolved_artifacts_dir,
                  settings.heartbeat_seconds, retry_seconds(settings))  # its heartbeat thread is never started
    stop_file = launch_dir / "stop"
    hooks = watch.hooks()
    hooks.should_stop = lambda: watch.should_stop() or stop_file.exists()
    return hooks


def main(claim_file: Path) -> int:
    """torchrun's entry: the rank is in RANK."""
    return run_rank(claim_file, int(os.environ.get("RANK", "0")))


def run_rank(claim_file: Path, rank: int) -> int:
    """Run rank `rank` of the job in `claim_file` (written by workers.launchers) to its end.

    The launcher (torchrun, or Ray Train in workers.ray_launcher) started the processes;
    the loop joins or finds their process group (workers.trainer.distributed.make_world).
    """
    launch = json.loads(claim_file.read_text())
    launch_dir = claim_file.parent
    (launch_dir / f"pid-rank{rank}").write_text(str(os.getpid()))  # for operators and the fault tests
    try:
        from workers.trainer.hooks import TrainerHooks
        from workers.trainer.loop import train

        spec = JobSpec.model_validate(launch["claim"]["spec"])
        from workers.judges import Judge

        hooks = rank_zero_hooks(launch["claim"], launch_dir) if rank == 0 else TrainerHooks()
        hooks.judge = Judge(get_settings(), job_id=launch["claim"]["job_id"])  # every rank scores its shard
        resume = Path(launch["resume"]) if launch["resume"] else None
        result = train(spec, Path(launch["job_dir"]), hooks, resume_from=resume)
    except Exception as error:  # noqa: BLE001 - the worker reads this to fail the job with it
        message = f"{type(error).__name__}: {error}"
        (launch_dir / f"error-rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "kind": type(error).__name__, "message": message, "trace": traceback.format_exc()[-4000:]}))
        return 1
    (launch_dir / f"exit-rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "status": result.status, "last_step": result.last_step,
         "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
