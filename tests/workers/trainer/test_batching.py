"""Packing and the forward pass every loss uses: a shared prompt runs once, with the same result."""

import torch

from workers.trainer.batching import _full_pass_logits, completion_logits, distinct_rows, pack
from workers.trainer.models import build_tiny_model


def test_distinct_rows_maps_every_row_to_its_first_occurrence():
    ids = torch.tensor([[1, 2], [3, 4], [1, 2], [3, 4], [5, 6]])
    unique, row_to_unique, first_row = distinct_rows(ids)
    assert len(unique) == 3
    assert torch.equal(unique[row_to_unique], ids)
    assert torch.equal(ids[first_row], unique)
    assert sorted(first_row.tolist()) == [0, 1, 4]


def _grouped_batch(groups: int = 3, samples: int = 4):
    generator = torch.Generator().manual_seed(0)

    def ids(length: int) -> list[int]:
        return torch.randint(5, 90, (length,), generator=generator).tolist()

    prompts = [ids(length) for length in (30, 22, 41)[:groups]]
    rows = [p for p in prompts for _ in range(samples)]
    completions = [ids(1 + (7 * i) % 13) for i in range(len(rows))]
    return pack(rows, completions, pad_id=0)


def _logprob_sum_and_grads(model, batch, forward):
    model.zero_grad()
    logits = forward(model, batch)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    total = (logprobs * batch.completion_mask).sum()
    total.backward()
    return logprobs.detach(), [p.grad.clone() for p in model.parameters()]


def test_shared_prompt_pass_equals_one_pass_per_row_in_values_and_gradients():
    model = build_tiny_model()
    batch = _grouped_batch()
    shared, shared_grads = _logprob_sum_and_grads(model, batch, completion_logits)
    full, full_grads = _logprob_sum_and_grads(model, batch, _full_pass_logits)
    mask = batch.completion_mask.bool()
    assert shared.shape == full.shape == batch.targets.shape
    assert torch.allclose(shared[mask], full[mask], atol=1e-5)
    for a, b in zip(shared_grads, full_grads):  # equal up to float summation order
        assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7


def test_rows_with_distinct_prompts_take_the_single_pass():
    model = build_tiny_model()
    batch = _grouped_batch(samples=1)
    assert torch.equal(completion_logits(model, batch), _full_pass_logits(model, batch))
