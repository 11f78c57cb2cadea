"""Tracking export to MLflow and W&B (issue 17): one real tiny job (run_train_job, the Celery
task's function, on PostgreSQL) with all three integrations. A real `mlflow server`
(SQLite backend) started here receives every step's mu and reward, the spec as params and
the sampled-completions tables; W&B in offline mode writes its run folder into the job's
artifacts, whose records hold the same metrics and the table; TensorBoard gets the same
steps. A tracking URI off the allowlist is refused at POST /jobs; an allowlisted one with
nothing listening costs the job nothing but an event naming the tracker."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.lifecycle import job_dir
from service.settings import get_settings
from tests.conftest import wait_for
from workers.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TRAINING = {"total_steps": 3, "warmup_steps": 1, "save_every": 3, "sft_batch_size": 2, "rl_prompts_per_step": 2,
            "num_generations": 2, "max_completion_tokens": 8, "eval_every": 2, "eval_limit": 3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on SQLite and a free port, in its own session; stopped at the end."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
               f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with (folder / "server.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=240, interval=1, what="mlflow server")
        yield url
    finally:  # the server's session: it and the uvicorn worker it started, nothing else
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def allow(monkeypatch, pg_settings):
    """Settings for both sides (the API validates with the process settings, the job with
    these): the given MLflow URIs allowlisted, W&B offline."""

    def settings(*uris: str):
        env = {"AMFT_MLFLOW_TRACKING_URI_ALLOWLIST": ",".join(uris), "AMFT_WANDB_MODE": "offline"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return pg_settings.model_copy(update={"mlflow_tracking_uri_allowlist": ",".join(uris), "wandb_mode": "offline"})

    yield settings
    get_settings.cache_clear()


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` run file (a LevelDB-log framed stream after a
    7-byte header); the SDK no longer ships a reader."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pieces = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def test_mlflow_wandb_and_tensorboard_receive_the_same_run(pg_api, mlflow_server, allow, tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = allow(mlflow_server)
    spec = {"method": "amft", "model": "builtin:tiny", "training": TRAINING,
            "integrations": [{"kind": "mlflow", "tracking_uri": mlflow_server, "experiment": "amft-test"},
                             {"kind": "wandb", "project": "amft-test"}, {"kind": "tensorboard"}]}
    with pg_api.client(pg_api.key("alice")) as client:
        created = client.post("/jobs", json=spec)
        assert created.status_code == 201, created.text
        job = created.json()["id"]
        assert run_train_job(job, settings) == "succeeded"
        points = client.get(f"/jobs/{job}/metrics").json()["points"]
        events = client.get(f"/jobs/{job}/events").json()["events"]
    assert not [e for e in events if e["kind"] == "tracker_error"], events
    mu = {p["step"]: p["mu"] for p in points}
    rewards = {p["step"]: p["reward_mean"] for p in points if "reward_mean" in p}
    assert sorted(mu) == [1, 2, 3] and rewards

    # MLflow: every step's mu and reward, the spec as params, one samples table per eval step.
    mlflow = MlflowClient(mlflow_server)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("amft-test").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == job and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert {m.step: round(m.value, 6) for m in mlflow.get_metric_history(run_id, "mu")} == \
        {s: round(v, 6) for s, v in mu.items()}
    assert {m.step: round(m.value, 6) for m in mlflow.get_metric_history(run_id, "reward_mean")} == \
        {s: round(v, 6) for s, v in rewards.items()}
    params = runs[0].data.params
    assert params["method"] == "amft" and params["model"] == "builtin:tiny"
    assert params["training.total_steps"] == "3" and params["training.eval_every"] == "2"
    tables = sorted(a.path for a in mlflow.list_artifacts(run_id, "samples"))
    assert tables == ["samples/step-00000002.json", "samples/step-00000003.json"]
    table = json.loads(Path(mlflow.download_artifacts(run_id, tables[0], str(tmp_path))).read_text())
    assert table["columns"] == ["step", "split", "prompt", "completion", "reward", "correct"]
    assert table["data"] and all(row[0] == 2 and isinstance(row[4], float) for row in table["data"])

    # W&B offline: the run folder in the job's artifacts, with the same metrics and the table.
    folder = job_dir(settings.resolved_artifacts_dir, job) / "wandb"
    (run_file,) = folder.glob(f"offline-run-*-{job}/run-{job}.wandb")
    history, config = {}, {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
    assert {s: round(h["mu"], 6) for s, h in history.items()} == {s: round(v, 6) for s, v in mu.items()}
    assert {s: round(h["reward_mean"], 6) for s, h in history.items() if "reward_mean" in h} == \
        {s: round(v, 6) for s, v in rewards.items()}
    assert [s for s, h in sorted(history.items()) if h.get("samples/_type") == "table-file"] == [2, 3]
    assert config["method"] == "amft" and config["training"]["total_steps"] == 3

    # TensorBoard: the same steps and the same tables.
    events = EventAccumulator(str(job_dir(settings.resolved_artifacts_dir, job) / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("mu")] == [1, 2, 3]
    assert [t.step for t in events.Tensors("samples/text_summary")] == [2, 3]


def test_a_tracking_uri_off_the_allowlist_is_refused(pg_api, allow):
    allow("http://mlflow.internal:5000")
    spec = {"model": "builtin:tiny", "integrations": [{"kind": "mlflow", "tracking_uri": "http://169.254.169.254/"}]}
    with pg_api.client(pg_api.key("alice")) as client:
        answer = client.post("/jobs", json=spec)
        assert answer.status_code == 422
        assert "integrations.0.mlflow.tracking_uri" in answer.text and "allowlist" in answer.text
        assert "169.254.169.254" in answer.text
        spec["integrations"][0]["tracking_uri"] = "http://mlflow.internal:5000/"  # listed (a trailing / is the same)
        assert client.post("/jobs", json=spec).status_code == 201


def test_an_unreachable_tracker_records_an_event_and_the_job_succeeds(pg_api, allow):
    nowhere = f"http://127.0.0.1:{free_port()}"  # allowlisted, nothing listening
    settings = allow(nowhere)
    spec = {"method": "sft", "model": "builtin:tiny", "training": {**TRAINING, "eval_every": None},
            "integrations": [{"kind": "mlflow", "tracking_uri": nowhere}]}
    with pg_api.client(pg_api.key("alice")) as client:
        job = client.post("/jobs", json=spec).json()["id"]
        assert run_train_job(job, settings) == "succeeded"
        assert client.get(f"/jobs/{job}").json()["status"] == "succeeded"
        events = client.get(f"/jobs/{job}/events").json()["events"]
        assert len(client.get(f"/jobs/{job}/metrics").json()["points"]) == 3
    errors = [e["message"] for e in events if e["kind"] == "tracker_error"]
    assert errors and all(message.startswith("mlflow ") for message in errors)
    assert "export failed" in errors[0] and "retrying in" in errors[0]
