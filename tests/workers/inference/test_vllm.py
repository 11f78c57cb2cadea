"""The vLLM backend: request translation (no vllm needed), and a real run that only
happens where vllm and a CUDA device exist."""

import importlib.util
from types import SimpleNamespace

import pytest

from workers.inference.types import Row, Sampling
from workers.inference.vllm_engine import lora_request_args, prompt_input, row_output, sampling_kwargs


def test_rows_translate_to_sampling_params_and_token_prompts():
    row = Row([5, 6, 7], Sampling(max_tokens=32, temperature=0.7, top_p=0.9, n=3, seed=11, stop=("\n\n",)), seed=12)
    assert sampling_kwargs(row) == {"n": 1, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "seed": 12,
                                    "stop": ["\n\n"], "skip_special_tokens": True, "frequency_penalty": 0.0,
                                    "presence_penalty": 0.0, "logit_bias": None, "logprobs": None, "prompt_logprobs": None}
    scored = Row([1], Sampling(logprobs=2, echo=True, logit_bias={"7": -100.0}, presence_penalty=0.5), None)
    assert {"logprobs": 2, "prompt_logprobs": 2, "logit_bias": {7: -100.0}}.items() <= sampling_kwargs(scored).items()
    assert sampling_kwargs(Row([1], Sampling(), None))["stop"] is None
    assert prompt_input(row) == {"prompt_token_ids": [5, 6, 7]}


def test_outputs_and_lora_requests_translate_back(tmp_path):
    out = row_output(SimpleNamespace(token_ids=(1, 2), text="12", finish_reason="length"))
    assert (out.token_ids, out.text, out.finish_reason) == ([1, 2], "12", "length")
    assert row_output(SimpleNamespace(token_ids=(1,), text="", finish_reason="stop")).finish_reason == "stop"
    ranked = {4: SimpleNamespace(logprob=-0.1, rank=1), 9: SimpleNamespace(logprob=-3.0, rank=2)}
    scored = row_output(SimpleNamespace(token_ids=(9,), text="9", finish_reason="length", logprobs=[ranked]), top=1)
    assert scored.logprobs == [{"token": 9, "logprob": -3.0, "top": [[4, -0.1]]}]
    name, lora_id, path = lora_request_args(tmp_path / "step-000010")
    assert name == path == str(tmp_path / "step-000010") and lora_id > 0
    assert lora_request_args(tmp_path / "step-000010")[1] == lora_id  # stable per folder


def _vllm_and_cuda() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _vllm_and_cuda(), reason="needs vllm and a CUDA device")
@pytest.mark.timeout(600)
def test_vllm_engine_generates_from_a_checkpoint(settings, run_dir):
    import shutil

    from workers.inference.loader import EngineFactory, model_key

    job = "0123456789abcdef0123456789abcdef"
    shutil.copytree(run_dir / "checkpoints" / "step-000010",
                    settings.resolved_artifacts_dir / "jobs" / job / "checkpoints" / "step-000010")
    factory = EngineFactory(settings.model_copy(update={"inference_backend": "vllm"}))
    engine = factory.load(model_key({"kind": "checkpoint", "job_id": job, "step": 10}))
    result = engine.generate(["Tom has 3 apples."], Sampling(max_tokens=8, temperature=0, n=2))[0]
    assert len(result.completions) == 2 and all(c.tokens <= 8 for c in result.completions)
    factory.unload(engine)
