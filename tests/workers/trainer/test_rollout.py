"""The rollout engine: greedy decoding matches transformers' generate, sampling obeys top_p."""

import torch

from service.settings import get_settings
from workers.trainer.models import load_policy
from workers.trainer.rollout import TransformersEngine, next_token


def test_greedy_decoding_matches_model_generate():
    model, tokenizer = load_policy("builtin:tiny", get_settings())
    engine = TransformersEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    prompts = [tokenizer("Question: 1 + 2?\nAnswer: ")["input_ids"], tokenizer("Hi")["input_ids"]]
    ours = engine.generate(prompts, num_samples=1, max_new_tokens=12, greedy=True)
    for prompt, completion in zip(prompts, ours):
        reference = model.generate(
            input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[0, len(prompt):].tolist()
        if tokenizer.eos_token_id in reference:
            reference = reference[: reference.index(tokenizer.eos_token_id) + 1]
        assert completion == reference


def test_sampling_returns_num_samples_per_prompt_and_is_seeded():
    model, tokenizer = load_policy("builtin:tiny", get_settings())
    engine = TransformersEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    prompts = [tokenizer("abc")["input_ids"], tokenizer("de")["input_ids"]]
    torch.manual_seed(3)
    first = engine.generate(prompts, num_samples=3, max_new_tokens=8)
    torch.manual_seed(3)
    again = engine.generate(prompts, num_samples=3, max_new_tokens=8)
    assert len(first) == 6 and first == again
    assert all(1 <= len(c) <= 8 for c in first)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    drawn = {int(next_token(logits, 1.0, 0.7, greedy=False)) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 + 0.3 reaches 0.7; the tail is never sampled
    assert int(next_token(logits, 1.0, 1.0, greedy=True)) == 0


def test_samples_of_one_prompt_share_its_prefill_and_decode_as_if_alone():
    model, tokenizer = load_policy("builtin:tiny", get_settings())
    engine = TransformersEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    prompts = [tokenizer("Question: 4 + 5?\nAnswer: ")["input_ids"], tokenizer("xyz")["input_ids"]]
    grouped = engine.generate(prompts, num_samples=3, max_new_tokens=10, greedy=True)
    alone = engine.generate(prompts, num_samples=1, max_new_tokens=10, greedy=True)
    assert grouped == [alone[0]] * 3 + [alone[1]] * 3
