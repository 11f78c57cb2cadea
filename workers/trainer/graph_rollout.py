"""Rollouts on a GPU: a preallocated KV cache, and each decode step replayed as one CUDA graph.

Why: a decode step of a small model is many tiny kernels (about 1,200 for SmolLM2-135M,
counted with torch's profiler). Launched one by one from Python they took 21 ms per token on
an H200, the GPU idle most of that time; replayed as one captured graph, 8.6 ms
(bench/results/rollout_speed.md). Capture needs every tensor the step touches to keep its
address, so the cache is transformers' `StaticCache` (filled in place; it advances its own
write position on the device) and the step's inputs are copied into fixed buffers. The mask
is a full 4D additive mask, which transformers passes to attention as it is, so no
mask-building code (with its host-side checks) runs in the graph.

`make_engine` picks the engine once, at setup: this one on CUDA for models whose layers all
use full attention with plain rotary positions, the dynamic-cache `TransformersEngine`
everywhere else, or everywhere when AMFT_CUDA_GRAPH_ROLLOUTS=false. A forward that cannot be
captured fails the job with an error naming that setting, rather than silently decoding at
less than half the speed.
"""

from __future__ import annotations

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from workers.trainer.batching import base_config
from workers.trainer.rollout import TransformersEngine, left_padded


# Rotary variants that rescale from the largest position, read on the host: not capturable.
HOST_SYNCING_ROPE = ("dynamic", "longrope")


def make_engine(model: torch.nn.Module, pad_id: int, eos_id: int, cuda_graphs: bool = True) -> TransformersEngine:
    """The rollout engine for this model and device (one choice, made at setup)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    if cuda_graphs and on_cuda and supports_static_cache(model):
        return StaticCacheEngine(model, pad_id, eos_id, use_graphs=True)
    return TransformersEngine(model, pad_id, eos_id)


def supports_static_cache(model: torch.nn.Module) -> bool:
    """True when every layer gets a plain full-attention static cache and positions are plain rotary."""
    config = base_config(model)
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") in HOST_SYNCING_ROPE:
        return False
    cache = StaticCache(config=config, max_cache_len=1)  # layers allocate lazily: free
    return all(type(layer) is StaticLayer for layer in cache.layers)


class StaticCacheEngine(TransformersEngine):
    """Decodes into a cache sized for prompt + max_new_tokens; with use_graphs, replays CUDA graphs.

    Slot j of the cache holds token j of the row: the left-padded prompt in [0, P), the t-th
    new token at P + t. A row may attend to its real prompt tokens and to the new tokens so far.
    Without graphs (CPU, tests) the same steps run eagerly.
    """

    def __init__(self, model, pad_id: int, eos_id: int, max_batch: int = 256, use_graphs: bool = False):
        super().__init__(model, pad_id, eos_id, max_batch)
        self.use_graphs = use_graphs

    def _decode(self, rows, max_new_tokens, temperature, top_p, greedy) -> list[list[int]]:
        device = next(self.model.parameters()).device
        dtype = self.model.get_input_embeddings().weight.dtype
        input_ids, prompt_mask, positions = left_padded(rows, self.pad_id, device)
        batch, width = input_ids.shape
        length = width + max_new_tokens
        cache = StaticCache(config=base_config(self.model), max_cache_len=length)
        visible = torch.zeros(batch, length, dtype=torch.bool, device=device)  # [B, L] slots a row may read
        visible[:, :width] = prompt_mask.bool()
        causal = torch.ones(width, length, dtype=torch.bool, device=device).tril()  # [P, L]
        prefill_mask = additive_mask(visible[:, None, None, :] & causal, dtype)  # [B, 1, P, L]
        logits = self._forward(input_ids, prefill_mask, positions, cache)
        step = DecodeStep(self.model, cache, additive_mask(visible, dtype)[:, None, None, :], self.use_graphs)
        next_position = positions[:, -1:] + 1  # [B, 1]

        def advance(token: torch.Tensor, t: int) -> torch.Tensor:
            logits = step(token, next_position, slot=width + t)
            next_position.add_(1)
            return logits

        return self._sample(logits, advance, max_new_tokens, temperature, top_p, greedy)


class DecodeStep:
    """One decode step over fixed input buffers: eager, or captured once and then replayed.

    The first call runs eagerly on a side stream (the warm-up capture needs, and a real step),
    then captures; every later call replays. The graph reads the model's weights in place, so
    it must not outlive one `generate` call (the optimizer steps between calls are fine, being
    in place, but a new cache or batch shape needs a new graph).
    """

    def __init__(self, model, cache: StaticCache, mask: torch.Tensor, use_graph: bool):
        """mask [B, 1, 1, L]: the additive mask over the cache's slots after the prompt; owned and updated here."""
        batch, device = mask.shape[0], mask.device
        self.model, self.cache, self.mask, self.use_graph = model, cache, mask, use_graph
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)  # [B, 1]
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=device)  # [B, 1]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def __call__(self, token: torch.Tensor, position: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits [B, V] after feeding token [B] at position [B, 1] into cache slot `slot`."""
        self.token.copy_(token[:, None])
        self.position.copy_(position)
        self.mask[..., slot] = 0.0  # the new token attends to itself, and every later token to it
        if not self.use_graph:
            return self._forward()
        if self.graph is None:
            return self._warm_up_and_capture()
        self.graph.replay()
        return self.logits.clone()

    def _warm_up_and_capture(self) -> torch.Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self._forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # records only: the cache advances at each replay
                self.logits = self._forward()
        except RuntimeError as error:  # e.g. a forward that reads a GPU value on the host
            _end_failed_capture()
            raise RuntimeError(
                f"this model's decode step cannot be captured as a CUDA graph ({error}); "
                "set AMFT_CUDA_GRAPH_ROLLOUTS=false to decode eagerly"
            ) from error
        self.graph = graph
        return logits

    def _forward(self) -> torch.Tensor:
        out = self.model(
            input_ids=self.token, attention_mask=self.mask, position_ids=self.position,
            cache=self.cache, use_cache=True, logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()


def _end_failed_capture() -> None:
    """Let the process draw random numbers again after a failed capture.

    A capture marks torch's CUDA generator as capturing and unmarks it when the capture ends
    cleanly; a failed capture never unmarks it, and every later random draw on the GPU in this
    process (a worker runs many jobs) then fails. A clean capture of one trivial op unmarks it.
    """
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        torch.zeros(1, device="cuda").add_(1)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where visible, the dtype's most negative value elsewhere (what attention adds to scores)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)
