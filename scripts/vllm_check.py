"""Run by scripts/vllm-check.sh inside its vllm environment: every object the vLLM backend
hands vLLM is built against the installed vllm; only the engine's construction is skipped
without a GPU. Prints what was checked; exits non-zero on the first mismatch."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import vllm
from vllm import AsyncEngineArgs, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest

from workers.inference import vllm_engine
from workers.inference.types import Row, Sampling


def main() -> int:
    print(f"vllm {vllm.__version__}")
    folder = Path(tempfile.mkdtemp())
    options = vllm_engine.engine_options(folder, dtype="auto", gpu_memory_utilization=0.5, enable_lora=True,
                                         max_lora_rank=16, max_model_len=2048)
    args = AsyncEngineArgs(**options)
    assert args.trust_remote_code is False and args.enable_lora, args
    print("AsyncEngineArgs: ok")
    rows = [
        Row([1, 2, 3], Sampling(max_tokens=8, temperature=0.7, top_p=0.9, seed=1, stop=("\n",)), seed=1),
        Row([4, 5], Sampling(max_tokens=4, logprobs=3, echo=True, frequency_penalty=0.5, presence_penalty=0.2,
                             logit_bias={"7": -100.0}), seed=None),
    ]
    for row in rows:
        params = SamplingParams(**vllm_engine.sampling_kwargs(row))
        assert params.max_tokens == row.sampling.max_tokens and params.logprobs == row.sampling.logprobs
        prompt = TokensPrompt(**vllm_engine.prompt_input(row))
        assert prompt["prompt_token_ids"] == row.prompt_ids
    print("SamplingParams (logprobs, prompt_logprobs, penalties, logit_bias) and TokensPrompt: ok")
    lora = LoRARequest(*vllm_engine.lora_request_args(folder))
    assert lora.lora_int_id > 0
    print("LoRARequest: ok")
    import torch

    if not torch.cuda.is_available():
        print("engine construction: skipped (no GPU)")
        return 0
    print("engine construction: run tests/workers/inference/test_vllm.py on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
