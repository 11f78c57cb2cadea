"""Token ids in, padded tensors out: the one layout every forward pass uses.

A batch row is [left-padded prompt | completion | right padding]. Left-padding the prompts
puts every completion at the same offset, so the logits that predict completion tokens are
one contiguous slice, and the LM head (a large share of a small model's compute) runs on
completion positions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from workers.trainer.models import format_prompt


def encode_prompt(tokenizer, prompt, max_tokens: int) -> list[int]:
    """Prompt ids, formatted as generation sees them, keeping the last max_tokens."""
    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:]


def encode_completion(tokenizer, completion: str, max_tokens: int) -> list[int]:
    """Expert completion ids ending in EOS (so the model learns to stop), truncated."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return (ids + [tokenizer.eos_token_id])[:max_tokens]


@dataclass
class PackedBatch:
    """input_ids/attention_mask/position_ids: [B, L]; targets/completion_mask: [B, C]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def completion_len(self) -> int:
        return self.targets.shape[1]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in vars(self).values()))

    def micro_batches(self, rows: int) -> list[PackedBatch]:
        """Consecutive row slices of at most `rows` rows each."""
        size = self.input_ids.shape[0]
        return [PackedBatch(*(t[i : i + rows] for t in vars(self).values())) for i in range(0, size, rows)]


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> PackedBatch:
    """Pack (prompt, completion) id lists into one right-aligned-prompt batch."""
    prompt_len = max(len(p) for p in prompts)
    completion_len = max(max(len(c) for c in completions), 1)
    rows, masks = [], []
    for prompt, completion in zip(prompts, completions):
        left = prompt_len - len(prompt)
        right = completion_len - len(completion)
        rows.append([pad_id] * left + prompt + completion + [pad_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
    input_ids = torch.tensor(rows, dtype=torch.long)
    attention_mask = torch.tensor(masks, dtype=torch.long)
    # Positions count real tokens only, as generation with left padding numbers them.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    completion_mask = attention_mask[:, prompt_len:].float()
    return PackedBatch(
        input_ids, attention_mask, position_ids, input_ids[:, prompt_len:], completion_mask
    )


def completion_logits(model, batch: PackedBatch) -> torch.Tensor:
    """Logits predicting each completion token: [B, C, V]. The LM head skips the prompt.

    Rows that share a prompt (a GRPO group's G samples) run it once: the distinct prompts
    go through the model first, their key/value cache is copied out to every row, and the
    completions run on top of it. Gradients flow back through the copies into the shared
    prompt pass, so the result equals one pass over [prompt | completion] per row. With
    long prompts this removes most of an RL batch's compute (issue 5: tier 1's prompts are
    ~150 tokens, its completions ~40).
    """
    prompt_len = batch.input_ids.shape[1] - batch.completion_len
    if prompt_len == 0:
        return _full_pass_logits(model, batch)
    prompts, row_prompt, first_row = distinct_rows(batch.input_ids[:, :prompt_len])
    if len(prompts) == len(row_prompt):
        return _full_pass_logits(model, batch)
    cache = DynamicCache(config=base_config(model))
    prompt_out = model(
        input_ids=prompts,
        attention_mask=batch.attention_mask[first_row, :prompt_len],
        position_ids=batch.position_ids[first_row, :prompt_len],
        cache=cache, use_cache=True, logits_to_keep=1,
    )
    cache.batch_select_indices(row_prompt)  # [U, ...] -> [B, ...], differentiable
    out = model(
        input_ids=batch.input_ids[:, prompt_len:],
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids[:, prompt_len:],
        cache=cache, use_cache=True,
    )
    # The last prompt position predicts completion token 0; completion position i predicts i + 1.
    return torch.cat([prompt_out.logits[row_prompt], out.logits[:, :-1, :]], dim=1)


def _full_pass_logits(model, batch: PackedBatch) -> torch.Tensor:
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.completion_len + 1,
        use_cache=False,
    )
    # Position i predicts token i + 1: drop the last position (it predicts past the end).
    return out.logits[:, :-1, :]


def distinct_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [B, L] -> (distinct rows [U, L], row -> distinct index [B], first row of each [U])."""
    unique, inverse = torch.unique(ids, dim=0, return_inverse=True)
    rows = torch.arange(len(inverse), device=ids.device)
    first = torch.full((len(unique),), len(inverse), device=ids.device).scatter_reduce(0, inverse, rows, reduce="amin")
    return unique, inverse, first


def base_config(model):
    """The transformers config, also through a peft wrapper."""
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config
