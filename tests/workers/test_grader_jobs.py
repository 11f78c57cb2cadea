"""Issue 15 through the real service (API, PostgreSQL, Redis, Celery train and inference
workers): a dataset in OpenAI's fine-tuning format trains and evaluates end to end, and the
non-math task learns under its weighted graders."""

from __future__ import annotations

import json
import math

import pytest

from tests.api.inference_env import InferenceWorker
from tests.conftest import wait_for
from tests.workers.test_tasks import all_points, submit, wait_status
from workers.trainer.json_extract import JSON_EXTRACT_GRADERS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

# OpenAI's chat fine-tuning format, line for line: a system turn, a user turn, the assistant's
# answer (with OpenAI's optional `weight`), nothing else on the record.
QUESTIONS = [("Is 7 odd?", "yes"), ("Is 4 odd?", "no"), ("Is 9 odd?", "yes"), ("Is 2 odd?", "no"),
             ("Is 3 odd?", "yes"), ("Is 8 odd?", "no")]
OPENAI_LINES = [{"messages": [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": question},
                              {"role": "assistant", "content": answer, "weight": 1}]} for question, answer in QUESTIONS]


def openai_chat_spec(file_id: str) -> dict:
    source = {"source": f"file:{file_id}"}
    return {
        "method": "amft", "model": "builtin:tiny",
        "datasets": {"sft": source, "rl": source, "validation": source, "eval": [{**source, "name": "chat"}]},
        # The assistant turn is the `completion` column: graders read it like any field.
        "reward": [{"kind": "string_check", "name": "exact", "field": "completion", "case_sensitive": False}],
        "training": {"total_steps": 4, "warmup_steps": 1, "learning_rate": 1e-3, "eval_every": 2, "eval_limit": 6,
                     "save_every": 4, "sft_batch_size": 4, "rl_prompts_per_step": 2, "num_generations": 2,
                     "max_completion_tokens": 8},
        "controller": {"meta_interval": 2},
    }


def test_an_openai_fine_tuning_file_trains_and_evaluates(pg_settings, pg_api, pg_workers, tmp_path):
    pg_workers.start()
    with pg_api.client(pg_api.key("alice")) as client, InferenceWorker(pg_settings, tmp_path, concurrency=2) as worker:
        upload = client.post("/files", params={"filename": "chat.jsonl"},
                             content="".join(json.dumps(line) + "\n" for line in OPENAI_LINES).encode())
        assert upload.status_code == 201, upload.text
        file_id = upload.json()["id"]
        job_id = submit(client, openai_chat_spec(file_id))
        job = wait_status(client, job_id, ("succeeded", "failed"), timeout=300)
        assert job["status"] == "succeeded", (job, pg_workers.logs())

        points = {p["step"]: p for p in all_points(client, job_id)}
        assert sorted(points) == [1, 2, 3, 4]
        assert all(math.isfinite(points[s]["sft_loss"]) for s in points)  # the assistant turns are SFT targets
        rl_steps = [s for s in points if "reward_mean" in points[s]]
        assert rl_steps and all(0.0 <= points[s]["reward/exact"] <= 1.0 for s in rl_steps)
        assert {s for s in points if "eval_accuracy_chat" in points[s]} == {2, 4}

        evaluation = client.post(f"/jobs/{job_id}/evaluations", json={
            "dataset": {"source": f"file:{file_id}"}, "limit": 6, "sampling": {"max_tokens": 6, "temperature": 0.0}})
        assert evaluation.status_code == 202, evaluation.text
        path = f"/jobs/{job_id}/evaluations/{evaluation.json()['id']}"
        done = wait_for(lambda: (d := client.get(path).json())["status"] in ("succeeded", "failed") and d, 180,
                        what="the evaluation")
        assert done["status"] == "succeeded", (done["error"], worker.logs())
        items = done["items"]
        assert [item["prompt"] for item in items] == [
            [{"role": m["role"], "content": m["content"]} for m in line["messages"][:-1]] for line in OPENAI_LINES]
        expected = [line["messages"][-1]["content"] for line in OPENAI_LINES]
        assert [item["correct"] for item in items] == [
            item["output"].strip().casefold() == want for item, want in zip(items, expected)]
        assert done["accuracy"] == pytest.approx(sum(item["correct"] for item in items) / 6)


# builtin:json_extract with its graders (a JSON schema, 30%, plus a string check per field):
# every one needs a whole valid JSON object, which the tiny model first writes after about
# 40 SFT steps of 32 texts (measured). So 30 warm-up steps of SFT alone (no rollouts: quick),
# then 15 AMFT steps whose rollouts (temperature 0.5) are scored: the reward curve.
JSON_EXTRACT = {"source": "builtin:json_extract"}
RISING_SPEC = {
    "method": "amft", "model": "builtin:tiny",
    "datasets": {"sft": JSON_EXTRACT, "rl": JSON_EXTRACT, "validation": {**JSON_EXTRACT, "split": "validation"}, "eval": []},
    "reward": JSON_EXTRACT_GRADERS,
    "training": {"total_steps": 45, "warmup_steps": 30, "learning_rate": 3e-3, "sft_batch_size": 32, "temperature": 0.5,
                 "rl_prompts_per_step": 4, "num_generations": 4, "max_completion_tokens": 44, "save_every": 45,
                 "micro_batch_size": 32},
    "controller": {"eta_meta": 0.0},
}
FIRST_LAST = 4


@pytest.mark.timeout(600)  # 45 steps: about 1.5 minutes on a quiet 2-core machine, far more on a loaded one
def test_the_non_math_task_learns_and_reports_each_grader(pg_api, pg_workers):
    # One torch thread: on a shared, loaded machine (xdist workers, other jobs) two spinning
    # threads per process made these 45 steps take over 9 minutes instead of under 4.
    pg_workers.start(extra_env={"OMP_NUM_THREADS": "1"})
    weights = {grader["name"]: grader["weight"] for grader in JSON_EXTRACT_GRADERS}
    with pg_api.client(pg_api.key("alice")) as client:
        job_id = submit(client, RISING_SPEC)
        job = wait_status(client, job_id, ("succeeded", "failed"), timeout=540)
        assert job["status"] == "succeeded", (job, pg_workers.logs())
        points = [p for p in all_points(client, job_id) if "reward_mean" in p]
        assert [p["step"] for p in points] == list(range(31, 46))  # rollouts after the SFT warm-up
        for point in points:  # each grader is its own metric, and they combine by weight
            parts = {name: point[f"reward/{name}"] for name in weights}
            assert all(0.0 <= value <= 1.0 for value in parts.values())
            combined = sum(weights[name] * value for name, value in parts.items()) / sum(weights.values())
            assert point["reward_mean"] == pytest.approx(combined, abs=1e-6)
        first = sum(p["reward_mean"] for p in points[:FIRST_LAST]) / FIRST_LAST
        last = sum(p["reward_mean"] for p in points[-FIRST_LAST:]) / FIRST_LAST
        assert last > first + 0.05, [round(p["reward_mean"], 3) for p in points]
