"""The `transformers` backend (CPU or GPU): one KV-cached decode loop over a mixed batch.

`model.generate` takes one set of sampling settings per call, so batching requests with
different temperatures, seeds, stops and lengths through it would split them apart again.
This loop runs the model itself: a left-padded prefill, then one token per step for every
row, each row chosen with its own settings (workers.inference.sampling) and finished on
EOS, its own max_tokens or a stop string. Finished rows ride along until all are done,
or until the scheduler (workers.inference.batcher) asks the slice to yield; a row's state
lives on the row, so it resumes in a later slice. Abandoned rows stop at the next step.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache

from workers.inference.engine import BatchedEngine
from workers.inference.sampling import adjust_logits, choose_tokens, cut_at_stop, row_generators, token_logprobs
from workers.inference.types import Row


class TransformersEngine(BatchedEngine):
    """A loaded model + tokenizer behind a micro-batching queue."""

    backend = "transformers"

    def __init__(self, model, tokenizer, *, window_s: float = 0.005, max_rows: int = 64, name: str = "model"):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        super().__init__(tokenizer, max_context=max_context, window_s=window_s, max_rows=max_rows, name=name)
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        tensors = list(model.parameters()) + list(model.buffers())
        self.memory_bytes = sum(t.numel() * t.element_size() for t in tensors)

    @torch.inference_mode()
    def run_batch(self, rows: list[Row], yield_now: Callable[[], bool]) -> None:
        """Decode the rows (state on each row) until all are done or yield_now() is true.

        A row resumed from an earlier slice is prefilled with its prompt plus what it has
        generated so far. Every step drops rows whose request was abandoned and tells
        streaming requests that tokens were added.
        """
        self._score_prompts([row for row in rows if row.sampling.echo and row.prompt_logprobs is None])
        for row in rows:
            if not row.done and len(row.generated) >= row.sampling.max_tokens:  # max_tokens 0 (echo)
                row.finish_reason, row.text = "length", self.tokenizer.decode(row.generated, skip_special_tokens=True)
        input_ids, attention_mask = self._left_pad([row.prompt_ids + row.generated for row in rows])
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        temperatures = torch.tensor([row.sampling.temperature for row in rows], device=self.device)
        top_ps = torch.tensor([row.sampling.top_p for row in rows], device=self.device)
        generators = row_generators(rows)
        requests = list({id(row.request): row.request for row in rows if row.request is not None}.values())
        cache = DynamicCache(config=self.model.config)  # filled in place by each forward
        steps = max(row.sampling.max_tokens - len(row.generated) for row in rows) if rows else 0
        for _ in range(steps):
            _drop_abandoned(rows, requests)
            if all(row.done for row in rows):
                break
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                cache=cache, use_cache=True, logits_to_keep=1,
            )
            logits = out.logits[:, -1, :].float()
            tokens = choose_tokens(adjust_logits(logits, rows), temperatures, top_ps, generators)
            self._record_logprobs(rows, logits, tokens)
            for row, token in zip(rows, tokens.tolist()):
                if not row.done:
                    self._add_token(row, token)
            for request in requests:
                if request.on_step is not None:
                    request.on_step(request)
            if all(row.done for row in rows) or yield_now():
                break
            done = torch.tensor([row.done for row in rows], device=self.device)
            input_ids = tokens.masked_fill(done, self.pad_id).unsqueeze(1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1

    def _score_prompts(self, rows: list[Row]) -> None:
        """With echo: each prompt token's log-probability given the tokens before it (the
        model's log-softmax, one full forward per prompt; the first token has none)."""
        for row in rows:
            ids = torch.tensor([row.prompt_ids], device=self.device)
            log_probs = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)  # [L, V]
            top = row.sampling.logprobs or 0
            row.prompt_logprobs = [None] + [token_logprobs(log_probs[i - 1], row.prompt_ids[i], top)
                                            for i in range(1, len(row.prompt_ids))]

    def _record_logprobs(self, rows: list[Row], logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """The model's own log-softmax (before temperature, penalties, bias) of each token."""
        wanted = [i for i, row in enumerate(rows) if row.sampling.logprobs is not None and not row.done]
        if not wanted:
            return
        log_probs = torch.log_softmax(logits[wanted], dim=-1)
        for place, index in enumerate(wanted):
            row = rows[index]
            token = int(tokens[index])
            if token in self.eos_ids:
                continue
            row.logprobs = (row.logprobs or []) + [token_logprobs(log_probs[place], token, row.sampling.logprobs)]

    def _add_token(self, row: Row, token: int) -> None:
        """Append one token to an unfinished row and finish it on EOS, a stop or its length."""
        if token in self.eos_ids:
            row.finish_reason = "stop"
        else:
            row.generated.append(token)
            if row.sampling.stop:
                cut = cut_at_stop(self.tokenizer.decode(row.generated, skip_special_tokens=True), row.sampling.stop)
                if cut is not None:
                    row.finish_reason, row.text = "stop", cut
            if not row.done and len(row.generated) >= row.sampling.max_tokens:
                row.finish_reason = "length"
        if row.done and row.text is None:
            row.text = self.tokenizer.decode(row.generated, skip_special_tokens=True)

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask [B, L], prompts aligned to the right."""
        width = max(len(p) for p in prompts)
        ids = [[self.pad_id] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(mask, dtype=torch.long, device=self.device),
        )


def _drop_abandoned(rows: list[Row], requests: list) -> None:
    """Finish (as `cancelled`) the rows of requests whose caller has gone."""
    gone = {id(request) for request in requests if request.abandoned()}
    for row in rows:
        if not row.done and id(row.request) in gone:
            row.finish_reason = "cancelled"


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids
