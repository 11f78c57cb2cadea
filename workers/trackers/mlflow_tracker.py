"""MLflow: one run per job on an allowlisted tracking server, through MLflow's own client.

The run is found again by its `amft.job_id` tag, so a resumed job (a new attempt) keeps
logging into the same run. Sampled completions go in as one `log_table` artifact per eval
step (`samples/step-<n>.json`): rewriting one on a retry changes nothing.
"""

from __future__ import annotations

import os
import time

from workers.trackers.base import TrackerContext, columns, flat_params

PARAM_VALUE_CHARS = 6000  # MLflow's limit on a parameter value
PARAMS_PER_BATCH = 100  # MLflow's limit on parameters in one log_batch


class MlflowTracker:
    def __init__(self, context: TrackerContext):
        # Retries are ours (workers.tracking backs off); MLflow's own would hold the training
        # step for minutes against a server that is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(context.settings.mlflow_request_timeout_seconds))
        from mlflow import MlflowClient
        from mlflow.entities import Param

        config = context.config
        self.client = MlflowClient(tracking_uri=config["tracking_uri"])
        self.run_id = self._run(config.get("experiment") or "amft", config.get("run_name") or context.job_id,
                                context.job_id)
        params = [Param(key, value[:PARAM_VALUE_CHARS]) for key, value in flat_params(context.spec).items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_BATCH])
        self.client.log_dict(self.run_id, context.spec, "spec.json")

    def _run(self, experiment: str, run_name: str, job_id: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`amft.job_id` = '{job_id}'", max_results=1)
        if runs:
            return runs[0].info.run_id
        return self.client.create_run(experiment_id, run_name=run_name, tags={"amft.job_id": job_id}).info.run_id

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(name, value, now, step) for name, value in metrics.items()])

    def log_samples(self, step: int, rows: list[dict]) -> None:
        table = {"step": [step] * len(rows), **columns(rows)}
        self.client.log_table(self.run_id, data=table, artifact_file=f"samples/step-{step:08d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
