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


@pytest.mark.timeout(600)
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

        with pytest.raises(openai.AuthenticationError) as bad_key:
            openai.OpenAI(base_url=f"{api.url}/v1", api_key="wrong", max_retries=0).models.list()
        assert "API key" in bad_key.value.message and bad_key.value.code == "invalid_api_key"
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="0" * 32, messages=messages)
        assert "no job" in unknown.value.message and unknown.value.param == "model"
        with pytest.raises(openai.NotFoundError) as unknown_name:
            client.completions.create(model="gpt-4o", prompt="Hi")
        assert "gpt-4o" in unknown_name.value.message and unknown_name.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(model=job, messages=messages, max_tokens=10**6)
        assert "exceeds this deployment's limit" in too_long.value.message and too_long.value.param == "max_tokens"
        # The rest of the API keeps its own shape.
        with api.client(key) as plain:
            body = plain.post("/generate", json={"model": "0" * 32, "prompts": ["x"]}).json()
        assert "detail" in body and "problems" in body and "error" not in body


@pytest.mark.timeout(600)
def test_openai_options_models_retrieve_and_logprobs(pg_settings, run_dir, tmp_path):
    """models.retrieve; chat content parts, developer role and name; every refused option
    answers 400 naming it; logit_bias, include_usage and logprobs do what they say, the
    logprobs equal the checkpoint's own log-softmax computed here with transformers."""
    import torch

    from workers.trainer.models import load_model_folder

    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        key = api.key("alice")
        tenant = authenticate(get_database(pg_settings.resolved_database_url), key).tenant_id
        job = job_with_checkpoints(pg_settings, tenant, run_dir)
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, timeout=120, max_retries=0)
        for listed in client.models.list():
            assert client.models.retrieve(listed.id).id == listed.id
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("f" * 32)

        messages = [{"role": "developer", "content": "Answer briefly."},
                    {"role": "user", "name": "tom", "content": [{"type": "text", "text": "Tom has 3 apples. "},
                                                                 {"type": "text", "text": "How many?"}]}]
        chat = client.chat.completions.create(model=job, messages=messages, max_tokens=5, temperature=0)
        assert chat.choices[0].finish_reason in ("stop", "length"), worker.logs()

        refused = {"tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"},
                   "tool_choice": "auto", "parallel_tool_calls": True, "frobnicate": 1}
        for name, value in refused.items():
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model=job, messages=messages, max_tokens=2, extra_body={name: value})
            assert caught.value.param == name and name in caught.value.message
        for name, value in {"suffix": "x", "best_of": 3}.items():
            with pytest.raises(openai.BadRequestError) as caught:
                client.completions.create(model=job, prompt="Hi", max_tokens=2, extra_body={name: value})
            assert caught.value.param == name
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=job, messages=messages, max_tokens=2, top_logprobs=2)
        assert caught.value.param == "top_logprobs"

        model, tokenizer = load_model_folder(run_dir / "checkpoints" / "step-000010")
        x = tokenizer.convert_tokens_to_ids("x")
        biased = client.completions.create(model=job, prompt="Hi", max_tokens=4, temperature=0, logit_bias={str(x): 100})
        assert biased.choices[0].text == "xxxx"

        usage_chunks = [c for c in client.completions.create(model=job, prompt="Hi", max_tokens=3, stream=True,
                                                             stream_options={"include_usage": True}) if c.usage]
        assert len(usage_chunks) == 1 and usage_chunks[0].usage.completion_tokens <= 3
        no_usage = [c for c in client.chat.completions.create(model=job, messages=messages, max_tokens=3, stream=True) if c.usage]
        assert no_usage == []

        prompt = "Question: 1 + 1?\nAnswer: "
        done = client.completions.create(model=job, prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
        lp = done.choices[0].logprobs
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        new_ids = [tokenizer.convert_tokens_to_ids(t) for t in lp.tokens]
        assert "".join(lp.tokens) == done.choices[0].text and len(new_ids) >= 1
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + new_ids])).logits[0].float()
        expected = torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1 : -1]
        for position, token in enumerate(new_ids):
            assert abs(lp.token_logprobs[position] - float(expected[position, token])) < 1e-4
            top = expected[position].topk(3)
            assert sorted(lp.top_logprobs[position].values(), reverse=True) == pytest.approx(top.values.tolist(), abs=1e-4)

        # echo with max_tokens 0 on a token-id prompt: the prompt's own log-probabilities
        echoed = client.completions.create(model=job, prompt=prompt_ids, max_tokens=0, echo=True, logprobs=2)
        e = echoed.choices[0].logprobs
        assert echoed.choices[0].text == tokenizer.decode(prompt_ids) and len(e.tokens) == len(prompt_ids)
        assert e.token_logprobs[0] is None and echoed.usage.completion_tokens == 0
        with torch.no_grad():
            full = torch.log_softmax(model(torch.tensor([prompt_ids])).logits[0].float(), dim=-1)
        for i in range(1, len(prompt_ids)):
            assert abs(e.token_logprobs[i] - float(full[i - 1, prompt_ids[i]])) < 1e-4
            assert len(e.top_logprobs[i]) <= 2 and max(e.top_logprobs[i].values()) >= e.token_logprobs[i] - 1e-6
        with_text = client.completions.create(model=job, prompt=prompt, max_tokens=2, echo=True, logprobs=0, temperature=0)
        assert with_text.choices[0].text.startswith(prompt)
        assert len(with_text.choices[0].logprobs.tokens) == len(prompt_ids) + with_text.usage.completion_tokens

        chat_lp = client.chat.completions.create(model=job, messages=messages, max_tokens=3, temperature=0,
                                                 logprobs=True, top_logprobs=2)
        content = chat_lp.choices[0].logprobs.content
        assert "".join(c.token for c in content) == chat_lp.choices[0].message.content
        assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)
