"""The transformers engine: its decode loop against model.generate, per-row sampling,
finish reasons, and micro-batching of concurrent requests into one generate call."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch

from workers.inference.transformers_engine import TransformersEngine
from workers.inference.types import InferenceError, Sampling
from workers.trainer.models import format_prompt, load_model_folder

PROMPTS = ["Tom has 3 apples. He buys 4 more. How many apples does Tom have now?", "Ana has 12 coins."]


@pytest.fixture(scope="module")
def model_and_tokenizer(run_dir):
    return load_model_folder(run_dir / "checkpoints" / "step-000010")


def engine_for(model_and_tokenizer, window_s=0.005):
    model, tokenizer = model_and_tokenizer
    return TransformersEngine(model, tokenizer, window_s=window_s)


@pytest.mark.timeout(300)
def test_greedy_matches_model_generate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = engine_for(model_and_tokenizer)
    results = engine.generate(PROMPTS, Sampling(max_tokens=24, temperature=0))
    for prompt, result in zip(PROMPTS, results):
        ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert result.completions[0].text == expected
        assert result.prompt_tokens == ids.shape[1]
    engine.close()


@pytest.mark.timeout(300)
def test_seeded_sampling_is_the_same_alone_or_batched(model_and_tokenizer):
    engine = engine_for(model_and_tokenizer)
    sampling = Sampling(max_tokens=16, temperature=1.0, top_p=0.9, n=2, seed=7)
    alone = engine.generate(PROMPTS[:1], sampling)[0]
    batched = engine.generate(PROMPTS, sampling)[0]
    assert [c.text for c in alone.completions] == [c.text for c in batched.completions]
    assert alone.completions[0].text != alone.completions[1].text  # n samples differ
    engine.close()


@pytest.mark.timeout(300)
def test_finish_reasons_and_stop_strings(model_and_tokenizer):
    engine = engine_for(model_and_tokenizer)
    long = engine.generate(PROMPTS[:1], Sampling(max_tokens=5, temperature=0))[0].completions[0]
    assert long.finish_reason == "length" and long.tokens == 5
    sampling = Sampling(max_tokens=24, temperature=1.0, seed=3)  # seeded: the same text again
    full = engine.generate(PROMPTS[:1], sampling)[0].completions[0].text
    stop = full[8:10]
    assert len(stop) == 2
    cut = engine.generate(PROMPTS[:1], replace(sampling, stop=(stop,)))[0].completions[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and full.startswith(cut.text)
    engine.close()


@pytest.mark.timeout(300)
def test_concurrent_requests_share_one_generate_call(model_and_tokenizer):
    engine = engine_for(model_and_tokenizer, window_s=0.3)
    sampling = Sampling(max_tokens=8, temperature=0)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: engine.generate([p], sampling), PROMPTS * 2))
    assert len(results) == 4
    assert engine.stats.requests == 4
    assert engine.stats.calls < 4 and engine.stats.max_requests_per_call >= 2
    # Batched answers equal the unbatched ones.
    alone = engine.generate([PROMPTS[0]], sampling)[0].completions[0].text
    assert results[0][0].completions[0].text == alone
    engine.close()


@pytest.mark.timeout(300)
def test_prompt_longer_than_the_context_is_refused(model_and_tokenizer):
    engine = engine_for(model_and_tokenizer)
    with pytest.raises(InferenceError) as caught:
        engine.generate(["x" * 1100], Sampling(max_tokens=10))
    assert caught.value.code == "invalid" and "context" in caught.value.message
    engine.close()
