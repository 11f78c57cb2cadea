"""The static-cache engine decodes exactly what the dynamic-cache engine does; on CUDA, through graphs."""

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from service.settings import get_settings
from workers.trainer.graph_rollout import StaticCacheEngine, additive_mask, make_engine, supports_static_cache
from workers.trainer.models import load_policy
from workers.trainer.rollout import TransformersEngine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TEXTS = ["Question: 4 + 5?\nAnswer: ", "xyz", "Question: 12 * 3 - 7 = ?\nThink first.\nAnswer: "]


def _engines(device: str = "cpu", use_graphs: bool = False):
    model, tokenizer = load_policy("builtin:tiny", get_settings(), device=device)
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS]  # three lengths: left padding matters
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id)
    return TransformersEngine(model, *ids), StaticCacheEngine(model, *ids, use_graphs=use_graphs), prompts


def _sampled(engine, prompts, seed: int, **kwargs):
    torch.manual_seed(seed)
    return engine.generate(prompts, num_samples=3, max_new_tokens=24, **kwargs)


def test_static_cache_decoding_matches_dynamic_cache_decoding():
    dynamic, static, prompts = _engines()
    assert static.generate(prompts, 2, 24, greedy=True) == dynamic.generate(prompts, 2, 24, greedy=True)
    for seed in range(3):  # same logits, same random draws: the same samples, EOS included
        assert _sampled(static, prompts, seed, temperature=1.3, top_p=0.9) == _sampled(dynamic, prompts, seed, temperature=1.3, top_p=0.9)
    lengths = {len(c) for c in _sampled(static, prompts, 0, temperature=1.3)}
    assert len(lengths) > 1  # some rows stopped at EOS before others: the test covers finished rows


def test_additive_mask_is_zero_where_visible_and_most_negative_elsewhere():
    visible = torch.tensor([[True, False, True]])
    mask = additive_mask(visible, torch.bfloat16)
    assert mask.dtype == torch.bfloat16
    assert mask.tolist() == [[0.0, torch.finfo(torch.bfloat16).min, 0.0]]


def test_engine_choice_is_the_dynamic_cache_off_cuda_and_for_uncapturable_models():
    model, tokenizer = load_policy("builtin:tiny", get_settings())
    assert type(make_engine(model, tokenizer.pad_token_id, tokenizer.eos_token_id)) is TransformersEngine
    assert supports_static_cache(model)
    config = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    assert not supports_static_cache(MistralForCausalLM(MistralConfig(**config, sliding_window=8)))
    assert supports_static_cache(MistralForCausalLM(MistralConfig(**config, sliding_window=None)))
    dynamic_rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert not supports_static_cache(MistralForCausalLM(MistralConfig(**config, rope_parameters=dynamic_rope)))


@needs_cuda
def test_cuda_graph_decoding_matches_eager_decoding():
    dynamic, graphed, prompts = _engines("cuda", use_graphs=True)
    assert type(make_engine(graphed.model, graphed.pad_id, graphed.eos_id)) is StaticCacheEngine
    assert type(make_engine(graphed.model, graphed.pad_id, graphed.eos_id, cuda_graphs=False)) is TransformersEngine
    assert graphed.generate(prompts, 2, 24, greedy=True) == dynamic.generate(prompts, 2, 24, greedy=True)
    for seed in range(3):
        assert _sampled(graphed, prompts, seed) == _sampled(dynamic, prompts, seed)


@needs_cuda
def test_cuda_graph_sees_weight_updates_between_calls():
    dynamic, graphed, prompts = _engines("cuda", use_graphs=True)
    before = graphed.generate(prompts, 1, 16, greedy=True)
    with torch.no_grad():
        for p in graphed.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # in place, as the optimizer updates
    after = graphed.generate(prompts, 1, 16, greedy=True)
    assert after == dynamic.generate(prompts, 1, 16, greedy=True) and after != before


@needs_cuda
def test_uncapturable_forward_fails_with_the_setting_and_leaves_sampling_usable():
    _, graphed, prompts = _engines("cuda", use_graphs=True)
    # A host sync inside the forward cannot be captured.
    hook = graphed.model.model.norm.register_forward_hook(lambda module, args, out: out.sum().item() and None)
    try:
        with pytest.raises(RuntimeError, match="AMFT_CUDA_GRAPH_ROLLOUTS"):
            graphed.generate(prompts, 1, 16, greedy=True)
    finally:
        hook.remove()
    assert len(graphed.generate(prompts, 2, 8)) == 6  # sampling on the GPU works again

