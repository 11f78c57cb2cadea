"""True token streaming through the whole path (decode loop -> worker -> reply channel ->
SSE), read with the official `openai` client from a real server and inference worker."""

import time

import openai
import pytest

from tests.api.inference_env import InferenceWorker
from tests.conftest import ApiServer

pytestmark = pytest.mark.slow
MODEL = "base:builtin:tiny"  # untrained: seeded sampling gives varied characters to stream
PROMPT = "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"


def timed(stream) -> list[tuple[float, object]]:
    return [(time.monotonic(), chunk) for chunk in stream]


@pytest.mark.timeout(600)
def test_chunks_arrive_as_decoded_and_stops_split_across_tokens_are_cut(pg_settings, tmp_path):
    with ApiServer(pg_settings) as api, InferenceWorker(pg_settings, tmp_path) as worker:
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=api.key("alice"), timeout=120, max_retries=0)
        sampling = {"model": MODEL, "max_tokens": 40, "temperature": 1.0, "seed": 3}
        plain = client.completions.create(prompt=PROMPT, **sampling).choices[0].text
        assert len(plain) >= 12, worker.logs()

        arrivals = timed(client.completions.create(prompt=PROMPT, stream=True, **sampling))
        texts = [(at, c.choices[0].text) for at, c in arrivals if c.choices and c.choices[0].text]
        assert "".join(text for _, text in texts) == plain
        assert len(texts) >= 4  # one chunk per decode step, not one at the end
        assert len({at for at, _ in arrivals}) > 1 and texts[0][0] < arrivals[-1][0]
        assert arrivals[-1][1].choices[0].finish_reason == "length"

        stop = plain[8:11]  # three characters = three tokens of the character-level tokenizer
        cut = list(client.completions.create(prompt=PROMPT, stream=True, stop=[stop], **sampling))
        assert "".join(c.choices[0].text for c in cut) == plain[: plain.find(stop)]
        assert cut[-1].choices[0].finish_reason == "stop"

        messages = [{"role": "user", "content": PROMPT}]
        chat = client.chat.completions.create(messages=messages, n=2, **sampling)
        chunks = list(client.chat.completions.create(messages=messages, n=2, stream=True,
                                                     stream_options={"include_usage": True}, **sampling))
        for index in (0, 1):
            mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
            assert mine[0].delta.role == "assistant"
            assert "".join(c.delta.content or "" for c in mine) == chat.choices[index].message.content
            assert mine[-1].finish_reason == chat.choices[index].finish_reason
        assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

        with pytest.raises(openai.BadRequestError) as too_long:  # the worker's refusal keeps its status
            list(client.completions.create(prompt="x" * 5000, stream=True, **sampling))
        assert "context" in too_long.value.message
