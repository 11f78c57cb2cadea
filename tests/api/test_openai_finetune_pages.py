"""OpenAI fine-tuning front door (issue 17), with the unmodified `openai` client:
`fine_tuning.jobs.list(after=..., limit=...)` pages through a tenant's jobs (and the
client's auto-pagination, which passes `after`, sees each job once), and a finished job's
`trained_tokens` is the number of tokens it trained on, counted here from the file with
the model's tokenizer. The job runs through run_train_job, the Celery task's function."""

from __future__ import annotations

import io
import json

import openai
import pytest

from service.settings import get_settings
from tests.conftest import settings_env
from workers.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def chat_lines(count: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} + {i + 2}?"},
                          {"role": "assistant", "content": f"{i} + {i + 2} = {2 * i + 2}. #### {2 * i + 2}"}],
             "answer": str(2 * i + 2)} for i in range(count)]


def tokens_in(lines: list[dict], training: dict) -> int:
    """Prompt and completion tokens of every record, as the trainer encodes them."""
    from workers.trainer.batching import encode_completion, encode_prompt
    from workers.trainer.models import build_char_tokenizer

    tokenizer = build_char_tokenizer()  # builtin:tiny's tokenizer
    return sum(len(encode_prompt(tokenizer, line["messages"][:-1], training["max_prompt_tokens"]))
               + len(encode_completion(tokenizer, line["messages"][-1]["content"], training["max_completion_tokens"]))
               for line in lines)


@pytest.fixture
def process_settings(pg_api, monkeypatch):
    """The trainer reads the process settings (where uploaded files live): the API's."""
    for name, value in settings_env(pg_api.settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_list_pages_with_after_and_trained_tokens_counts_the_tokens(pg_api, process_settings):
    key = pg_api.key("alice")
    client = openai.OpenAI(base_url=pg_api.url + "/v1", api_key=key, max_retries=0)
    lines = chat_lines(8)
    uploaded = client.files.create(file=("train.jsonl", io.BytesIO("\n".join(map(json.dumps, lines)).encode())),
                                   purpose="fine-tune")

    def create() -> openai.types.fine_tuning.FineTuningJob:
        return client.fine_tuning.jobs.create(
            model="builtin:tiny", training_file=uploaded.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
            extra_body={"amft": {"training": {"max_completion_tokens": 64, "save_every": 2}}})

    first = create()
    our_id = first.id.removeprefix("ftjob-")
    assert run_train_job(our_id, pg_api.settings) == "succeeded"
    second, third = create(), create()

    finished = client.fine_tuning.jobs.retrieve(first.id)
    assert finished.status == "succeeded"
    with pg_api.client(key) as ours:
        training = ours.get(f"/jobs/{our_id}").json()["spec"]["training"]
    assert training["total_steps"] == 2  # 8 records, batch 4, one epoch: every record once
    assert finished.trained_tokens == tokens_in(lines, training) > 0
    assert client.fine_tuning.jobs.retrieve(second.id).trained_tokens is None  # not trained yet

    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [third.id, second.id] and page.has_more
    rest = client.fine_tuning.jobs.list(limit=2, after=second.id)
    assert [j.id for j in rest.data] == [first.id] and not rest.has_more
    assert rest.data[0].trained_tokens == finished.trained_tokens
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [third.id, second.id, first.id]  # auto-paging
    assert client.fine_tuning.jobs.list(after=third.id, limit=1).data[0].id == second.id

    bob = openai.OpenAI(base_url=pg_api.url + "/v1", api_key=pg_api.key("bob"), max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:  # another tenant's id is no cursor
        bob.fine_tuning.jobs.list(after=first.id)
    assert refused.value.body["param"] == "after"


def test_wandb_integration_maps_onto_the_spec_and_an_entity_is_refused(pg_api):
    key = pg_api.key("alice")
    client = openai.OpenAI(base_url=pg_api.url + "/v1", api_key=key, max_retries=0)
    uploaded = client.files.create(file=("t.jsonl", io.BytesIO("\n".join(map(json.dumps, chat_lines(4))).encode())),
                                   purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="builtin:tiny", training_file=uploaded.id,
                                         integrations=[{"type": "wandb", "wandb": {"project": "ft", "name": "run-1"}}])
    assert job.integrations[0].type == "wandb" and job.integrations[0].wandb.project == "ft"
    with pg_api.client(key) as ours:
        spec = ours.get(f"/jobs/{job.id.removeprefix('ftjob-')}").json()["spec"]
    assert spec["integrations"] == [{"kind": "wandb", "project": "ft", "run_name": "run-1"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="builtin:tiny", training_file=uploaded.id,
                                       integrations=[{"type": "wandb", "wandb": {"project": "ft", "entity": "them"}}])
    assert refused.value.body["param"] == "integrations.wandb.entity"
