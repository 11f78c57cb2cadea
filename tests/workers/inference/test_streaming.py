"""Token streaming from the transformers engine's decode loop: deltas arrive step by
step, concatenate to the plain result, and never show any part of a stop string."""

from dataclasses import replace

import pytest

from workers.inference.streaming import held_back
from workers.inference.transformers_engine import TransformersEngine
from workers.inference.types import Sampling
from workers.trainer.models import build_char_tokenizer, build_tiny_model

PROMPT = "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"


def test_held_back_counts_a_possible_stop_start():
    assert held_back("the answer is ##", ("###",)) == 2
    assert held_back("the answer is #", ("###", "is #!")) == 4  # the longest candidate wins
    assert held_back("no stop here", ("###",)) == 0
    assert held_back("ends with ###", ("###",)) == 2  # a full stop is the engine's to cut, not held here


@pytest.fixture(scope="module")
def engine():
    model, tokenizer = build_tiny_model(), build_char_tokenizer()  # untrained: any text streams alike
    engine = TransformersEngine(model, tokenizer, window_s=0.0)
    yield engine
    engine.close()


def streamed(engine, sampling, n_rows=1):
    calls: list[list] = []
    result = engine.generate([PROMPT], sampling, on_text=calls.append)
    texts = ["".join(text for call in calls for index, text in call if index == row) for row in range(n_rows)]
    return result[0], calls, texts


@pytest.mark.timeout(300)
def test_deltas_arrive_per_step_and_match_the_plain_result(engine):
    sampling = Sampling(max_tokens=24, temperature=1.0, seed=3)  # seeded: the same text every time
    plain = engine.generate([PROMPT], sampling)[0].completions[0]
    result, calls, texts = streamed(engine, sampling)
    assert len(plain.text) >= 4, "the test needs a completion of a few characters"
    assert len(calls) >= 4  # one call per decode step that added text, not one at the end
    assert texts[0] == plain.text == result.completions[0].text


@pytest.mark.timeout(300)
def test_a_stop_split_across_tokens_is_never_streamed(engine):
    sampling = Sampling(max_tokens=24, temperature=1.0, seed=3)
    plain = engine.generate([PROMPT], sampling)[0].completions[0].text
    stop = plain[6:9]  # three characters: three tokens of the character-level tokenizer
    expected = plain[: plain.find(stop)]
    assert len(expected) >= 3, f"the test needs text before the stop: {plain!r}"
    result, calls, texts = streamed(engine, replace(sampling, stop=(stop,)))
    assert result.completions[0].finish_reason == "stop"
    assert texts[0] == expected == result.completions[0].text
    assert stop not in "".join(text for call in calls for _, text in call)


@pytest.mark.timeout(300)
def test_each_sample_streams_under_its_own_index(engine):
    sampling = Sampling(max_tokens=12, temperature=1.0, seed=5, n=2)
    result, _calls, texts = streamed(engine, sampling, n_rows=2)
    assert texts == [c.text for c in result.completions]
