"""Weights & Biases through its own SDK: host, API key, entity and mode are deployment
settings (AMFT_WANDB_*); the run folder is written under `<job>/wandb/` (offline mode
keeps everything there, for `wandb sync`). The run id is the job id, so a resumed job
continues its run."""

from __future__ import annotations

from workers.trackers.base import SAMPLE_COLUMNS, TrackerContext


class WandbTracker:
    def __init__(self, context: TrackerContext):
        import wandb

        s = context.settings
        context.job_dir.mkdir(parents=True, exist_ok=True)  # wandb writes its run folders in <dir>/wandb/
        options = {"mode": s.wandb_mode, "console": "off", "silent": True, "disable_git": True, "save_code": False,
                   "x_disable_stats": True, "x_disable_machine_info": True, "reinit": "create_new",
                   "init_timeout": 30.0}  # an unreachable host fails the try (retried later), not the step for 90 s
        if s.wandb_api_key is not None:
            options["api_key"] = s.wandb_api_key.get_secret_value()
        if s.wandb_base_url:
            options["base_url"] = s.wandb_base_url
        self.wandb = wandb
        self.run = wandb.init(entity=s.wandb_entity, project=context.config.get("project") or "amft",
                              name=context.config.get("run_name") or context.job_id, id=context.job_id,
                              resume="allow", dir=str(context.job_dir), config=context.spec, settings=wandb.Settings(**options))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        table = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=[[row[c] for c in SAMPLE_COLUMNS] for row in rows])
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()
