"""The official `openai` client against a real uvicorn server and inference worker:
/v1/models, /v1/completions and /v1/chat/completions, plain and streamed."""

import openai
import pytest

from service.auth import authenticate
from service.db import get_database
from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer
from tests.inference_helpers import job_with_checkpoints, trained_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(str(tmp_path_factory.mktemp("trained")))


@pytest.mark.timeout(240)
def test_openai_client_plain_and_streamed(pg_settings, run_dir, tmp_path):
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        key = api.key("alice")
        tenant = authenticate(get_database(pg_settings.resolved_database_url), key).tenant_id
        job = job_with_checkpoints(pg_settings, tenant, run_dir)
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, timeout=120, max_retries=0)

        ids = [m.id for m in client.models.list()]
        assert job in ids and f"{job}:5" in ids and "base:builtin:tiny" in ids

        messages = [{"role": "user", "content": "Tom has 3 apples. He buys 4 more. How many now?"}]
        chat = client.chat.completions.create(model=job, messages=messages, max_tokens=10, temperature=0.9, seed=3)
        assert chat.object == "chat.completion" and chat.model == f"{job}:10", worker.logs()
        text = chat.choices[0].message.content
        assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens <= 10

        stream = client.chat.completions.create(model=job, messages=messages, max_tokens=10, temperature=0.9, seed=3, stream=True)
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text  # same seed, same text, delivered in pieces
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == chat.choices[0].finish_reason

        completion = client.completions.create(model=f"{job}:5", prompt=["Question: 1 + 1?\nAnswer: ", "Hi"], max_tokens=6, n=2)
        assert len(completion.choices) == 4 and all(c.finish_reason in ("stop", "length") for c in completion.choices)
        pieces = list(client.completions.create(model=job, prompt="Hi", max_tokens=6, stream=True))
        assert pieces[-1].choices[0].finish_reason in ("stop", "length")

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{api.url}/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="0" * 32, messages=messages)
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model=job, messages=messages, max_tokens=10**6)
