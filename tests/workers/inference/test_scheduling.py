"""The fair scheduler in front of every engine (workers.inference.batcher) on the real tiny
model: abandoned requests stop within a step or two, tenants are served round-robin, batch
work yields to interactive requests, and a row paused between slices resumes exactly."""

import threading
import time

import pytest
import torch

from service.settings import Settings
from workers.inference.batcher import BATCH, Abandoned
from workers.inference.transformers_engine import TransformersEngine
from workers.inference.types import Sampling
from workers.trainer.models import load_policy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)  # a shared, loaded machine: one thread decodes steadier
    return load_policy("builtin:tiny", Settings(home=tmp_path_factory.mktemp("home")), dtype=torch.float32, device="cpu")


def long_sampling(tokenizer, max_tokens: int, **extra) -> Sampling:
    """Sampling that never ends early: EOS is banned through logit_bias."""
    return Sampling(max_tokens=max_tokens, temperature=1.0, seed=7, logit_bias={str(tokenizer.eos_token_id): -100.0}, **extra)


def in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box["error"] = error
        box["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.timeout(120)
def test_a_cancelled_request_stops_within_steps(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_rows=8)
    started, gone = threading.Event(), threading.Event()
    seen = []

    def on_step(request):
        seen.append(max(len(row.generated) for row in request.rows))
        if seen[-1] >= 2:
            started.set()

    thread, box = in_thread(lambda: engine.generate(["Hello"] * 4, long_sampling(tokenizer, 200), cancelled=gone.is_set,
                                                    on_step=on_step))
    assert started.wait(60)
    gone.set()
    thread.join(60)
    assert isinstance(box.get("error"), Abandoned)
    assert engine.stats.abandoned == 1 and max(seen) < 200  # stopped long before its max_tokens
    # A deadline already passed: dropped before any decoding.
    with pytest.raises(Abandoned):
        engine.generate(["Hello"], long_sampling(tokenizer, 50), deadline=time.time() - 1)
    engine.close()


@pytest.mark.timeout(300)
def test_another_tenants_small_request_completes_while_a_large_one_runs(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_rows=4)
    first_step = threading.Event()
    large, large_box = in_thread(lambda: engine.generate(
        ["Hello"] * 2, long_sampling(tokenizer, 16, n=4), tenant="alice", on_step=lambda _r: first_step.set()))
    assert first_step.wait(120)
    small = engine.generate(["Hi"], Sampling(max_tokens=3, temperature=0), tenant="bob")
    small_done = time.monotonic()
    assert small[0].completions[0].tokens <= 3
    assert large.is_alive()  # bob was served while alice's 8 x 16 tokens were still decoding
    large.join(300)
    assert "value" in large_box and large_box["at"] > small_done
    assert all(c.tokens == 16 for r in large_box["value"] for c in r.completions)
    assert engine.stats.max_requests_per_call >= 2  # bob's row shared a slice with alice's
    engine.close()


@pytest.mark.timeout(300)
def test_batch_work_yields_to_interactive_requests(tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(model, tokenizer, max_rows=4)
    first_step = threading.Event()
    batch, batch_box = in_thread(lambda: engine.generate(
        ["Hello"] * 8, long_sampling(tokenizer, 16), tenant="alice", priority=BATCH, on_step=lambda _r: first_step.set()))
    assert first_step.wait(120)
    interactive = engine.generate(["Hi"], Sampling(max_tokens=3, temperature=0), tenant="alice")
    assert interactive[0].completions[0].tokens <= 3 and batch.is_alive()
    batch.join(300)
    assert "value" in batch_box
    engine.close()


@pytest.mark.timeout(120)
def test_a_row_paused_between_slices_continues_the_same_text(tiny):
    """Seeded sampling gives the same text alone or when sliced by another request."""
    model, tokenizer = tiny
    sampling = long_sampling(tokenizer, 12)
    alone = TransformersEngine(model, tokenizer, max_rows=8)
    expected = alone.generate(["Hello"], sampling)[0].completions[0].text
    alone.close()
    engine = TransformersEngine(model, tokenizer, max_rows=1)  # one row per slice: bob pauses alice
    first_step = threading.Event()
    thread, box = in_thread(lambda: engine.generate(["Hello"], sampling, tenant="alice", on_step=lambda _r: first_step.set()))
    assert first_step.wait(60)
    engine.generate(["Hi"], Sampling(max_tokens=3, temperature=0), tenant="bob")
    thread.join(120)
    assert engine.stats.calls >= 3  # alice's row was paused and resumed
    assert box["value"][0].completions[0].text == expected
    engine.close()


def test_penalties_and_logit_bias_follow_openai_formula():
    """logits - frequency_penalty * count - presence_penalty * (count > 0) + logit_bias."""
    from workers.inference.sampling import adjust_logits
    from workers.inference.types import Row

    logits = torch.zeros(2, 5)
    penalised = Row([1], Sampling(frequency_penalty=0.5, presence_penalty=1.0, logit_bias={"4": 3.0}), None, generated=[2, 2, 3])
    plain = Row([1], Sampling(), None, generated=[2])
    out = adjust_logits(logits, [penalised, plain])
    assert out[0].tolist() == [0.0, 0.0, -2.0, -1.5, 3.0]
    assert out[1].tolist() == [0.0] * 5 and logits.abs().sum() == 0  # input untouched
