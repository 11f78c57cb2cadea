"""The `model` grader judged by a real checkpoint served by this service.

The judge is the tiny model fine-tuned here (SFT, 40 steps, a few seconds) to reply 9, 0 and
5 to "Grade: great", "Grade: awful" and "Grade: okay". A real inference worker serves it; the
grader reaches it over the inference queue (as a training job does: workers/judges.py) and
through an allowlisted URL, this service's own OpenAI-compatible /v1, with the openai client.
"""

from __future__ import annotations

import json
import shutil

import pytest

from service.auth import authenticate
from service.db import get_database
from service.grader_specs import parse_graders
from service.settings import get_settings
from service.specs import JobSpec
from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer
from tests.inference_helpers import job_with_checkpoints
from workers.judges import Judge
from workers.trainer.graders import GraderFailed, Scorer

pytestmark = pytest.mark.slow

JUDGE_STEPS = 40
GRADES = {"great": "9", "awful": "0", "okay": "5"}
COMPLETIONS = ["great", "awful", "okay"]
RECORDS = [{"prompt": "Say how it went.", "answer": "x"}] * 3


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory):
    """The judge's training folder (its checkpoint at step JUDGE_STEPS)."""
    from workers.trainer.loop import train

    home = tmp_path_factory.mktemp("judge-home")
    files = home / "artifacts" / "files"
    files.mkdir(parents=True)
    file_id = "a" * 32
    rows = [{"prompt": f"Grade: {word}", "completion": grade} for word, grade in GRADES.items()]
    (files / f"{file_id}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = {"source": f"file:{file_id}"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AMFT_HOME", str(home))
        get_settings.cache_clear()
        spec = JobSpec.model_validate({
            "method": "sft", "model": "builtin:tiny", "datasets": {"sft": source, "rl": source, "validation": source, "eval": []},
            "training": {"total_steps": JUDGE_STEPS, "learning_rate": 3e-3, "sft_batch_size": 6, "warmup_steps": 0,
                         "save_every": JUDGE_STEPS, "max_completion_tokens": 4},
        })
        train(spec, home / "run")
    get_settings.cache_clear()
    yield home / "run"
    shutil.rmtree(home, ignore_errors=True)


def grader(**fields) -> dict:
    return {"kind": "model", "name": "judge", "prompt": "Grade: {completion}", "score_max": 9, **fields}


def score(spec: dict, judge: Judge, events: list[str]) -> list[float]:
    return Scorer(parse_graders([spec]), on_failure=lambda _name, message: events.append(message), judge=judge).score(
        COMPLETIONS, RECORDS).rewards


@pytest.mark.timeout(300)
def test_a_served_checkpoint_judges_hand_made_completions(pg_settings, judge_run, tmp_path, monkeypatch):
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        key = api.key("alice")
        tenant = authenticate(get_database(pg_settings.resolved_database_url), key).tenant_id
        job = job_with_checkpoints(pg_settings, tenant, judge_run, steps=(JUDGE_STEPS,))
        judge, events = Judge(pg_settings, tenant_id=tenant), []

        expected = [1.0, 0.0, pytest.approx(5 / 9)]  # replies 9, 0, 5 over score_max 9
        assert score(grader(model=job), judge, events) == expected, (events, worker.logs())
        raw = grader(model=f"job:{job}:{JUDGE_STEPS}", format="raw", prompt="Question: Grade: {completion}\nAnswer: ")
        assert score(raw, judge, events) == expected  # the training prompt format, written out
        assert events == []

        # A pattern that finds no number in some replies: those score 0, the event names the reply.
        assert score(grader(model=job, score_pattern="[09]"), judge, events) == [1.0, 0.0, 0.0]
        assert len(events) == 1 and "1 of 3 replies scored 0" in events[0] and "'5'" in events[0]
        # In none of them: the batch scores 0 and counts toward max_consecutive_failures.
        events.clear()
        never = Scorer(parse_graders([grader(model=job, score_pattern=r"score=(\d)", max_consecutive_failures=2)]),
                       on_failure=lambda _name, message: events.append(message), judge=judge)
        assert never.score(COMPLETIONS, RECORDS).rewards == [0.0, 0.0, 0.0]
        assert "no score in the judge's reply '9'" in events[0]
        with pytest.raises(GraderFailed, match="failed 2 batches in a row"):
            never.score(COMPLETIONS, RECORDS)

        # Another tenant cannot judge with alice's checkpoint: the grader fails, naming the job.
        events.clear()
        bob = Judge(pg_settings, tenant_id=authenticate(get_database(pg_settings.resolved_database_url), api.key("bob")).tenant_id)
        assert score(grader(model=job), bob, events) == [0.0, 0.0, 0.0] and f"no job {job}" in events[0]

        # The same checkpoint through an allowlisted OpenAI-compatible URL (this API's /v1).
        url = f"{api.url}/v1"
        monkeypatch.setenv("AMFT_JUDGE_URL_ALLOWLIST", url)
        get_settings.cache_clear()
        by_url = grader(model=job, url=url, format="raw", prompt="Question: Grade: {completion}\nAnswer: ")
        url_judge = Judge(pg_settings.model_copy(update={"judge_url_allowlist": url, "judge_api_key": key}))
        assert score(by_url, url_judge, events) == expected, (events, worker.logs())
        # The worker checks its own allowlist again: a URL the deployment dropped is refused there.
        events.clear()
        assert score(by_url, Judge(pg_settings), events) == [0.0, 0.0, 0.0]
        assert "not on this deployment's judge allowlist" in events[0]
    get_settings.cache_clear()


@pytest.mark.timeout(400)
def test_a_training_job_is_rewarded_by_its_tenants_served_judge(pg_settings, pg_api, pg_workers, judge_run, tmp_path):
    """The train worker reaches the judge with the job's own tenant (workers/train_job.py)."""
    from tests.workers.test_tasks import all_points, submit, wait_status

    pg_workers.start()
    key = pg_api.key("alice")
    tenant = authenticate(get_database(pg_settings.resolved_database_url), key).tenant_id
    with InferenceWorker(pg_settings, tmp_path, concurrency=2) as worker, pg_api.client(key) as client:
        judge_job = job_with_checkpoints(pg_settings, tenant, judge_run, steps=(JUDGE_STEPS,))
        spec = {"method": "grpo", "model": "builtin:tiny", "reward": [grader(model=judge_job)],
                "training": {"total_steps": 2, "warmup_steps": 0, "rl_prompts_per_step": 2, "num_generations": 2,
                             "max_completion_tokens": 6, "save_every": 2}}
        job_id = submit(client, spec)
        job = wait_status(client, job_id, ("succeeded", "failed"), timeout=300)
        assert job["status"] == "succeeded", (job, pg_workers.logs(), worker.logs())
        points = all_points(client, job_id)
        assert [p["step"] for p in points] == [1, 2]
        assert all(0.0 <= p["reward/judge"] <= 1.0 and p["reward_mean"] == pytest.approx(p["reward/judge"]) for p in points)
        events = client.get(f"/jobs/{job_id}/events").json()["events"]
        # Unparseable single replies may be reported; a batch the judge could not score may not.
        assert not [e for e in events if "batch scored 0" in e["message"]], events
