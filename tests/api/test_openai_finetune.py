"""The OpenAI fine-tuning front door (issue 17) driven by the unmodified `openai` client:
files.create, fine_tuning.jobs.create, list_events, retrieve until succeeded, then
completions.create on the fine-tuned model, against real train and inference workers."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.api.inference_env import InferenceWorker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def chat_lines(count: int) -> bytes:
    lines = []
    for i in range(count):
        a, b = i % 7 + 1, i % 5 + 2
        lines.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                   {"role": "assistant", "content": f"{a} + {b} = {a + b}. #### {a + b}"}],
                      "answer": str(a + b)})
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def test_official_client_fine_tunes_and_completes(pg_api, pg_workers, tmp_path):
    pg_workers.start()
    key = pg_api.key("alice")
    client = openai.OpenAI(base_url=pg_api.url + "/v1", api_key=key, max_retries=0)
    with InferenceWorker(pg_api.settings, tmp_path, concurrency=2) as worker:
        uploaded = client.files.create(file=("train.jsonl", io.BytesIO(chat_lines(8))), purpose="fine-tune")
        assert uploaded.id.startswith("file-") and uploaded.purpose == "fine-tune"
        job = client.fine_tuning.jobs.create(
            model="builtin:tiny", training_file=uploaded.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
            extra_body={"amft": {"training": {"max_completion_tokens": 16, "save_every": 1}}},
        )
        assert job.status == "queued" and job.method.type == "supervised"
        deadline = time.monotonic() + 300
        while job.status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, pg_workers.logs()
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", (job, pg_workers.logs())
        events = client.fine_tuning.jobs.list_events(job.id, limit=50).data
        assert events[0].message == "job succeeded" and events[0].object == "fine_tuning.job.event"  # newest first
        assert events[-1].message.startswith("queued (sft, 2 steps)")
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == [2, 1]
        assert [j.id for j in client.fine_tuning.jobs.list().data] == [job.id]
        completion = client.completions.create(model=job.fine_tuned_model, prompt="What is 2 + 3?",
                                               max_tokens=6, temperature=0)
        assert completion.choices[0].text is not None, worker.logs()
        assert completion.model.startswith(job.fine_tuned_model)

        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model="builtin:tiny", training_file=uploaded.id,
                                           method={"type": "dpo", "dpo": {}})
        assert refused.value.body["param"] == "method.type"
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model="builtin:tiny", training_file=uploaded.id,
                                           hyperparameters={"n_epochs": 1}, extra_body={"beta": 0.1})
        assert refused.value.body["param"] == "beta"
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model="builtin:tiny", training_file=uploaded.id, suffix="mine")
        assert refused.value.body["param"] == "suffix" and refused.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.retrieve("ftjob-" + "0" * 32)
