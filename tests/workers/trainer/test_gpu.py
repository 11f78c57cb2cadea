"""The CUDA path of the trainer: bf16 and fp32 steps, CUDA RNG in checkpoints. Skipped without a GPU."""

import math

import pytest
import torch
from safetensors.torch import load_file

from tests.workers.trainer.test_loop import run_collecting, tiny_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_amft_trains_on_cuda(dtype, tmp_path):
    result, points, _ = run_collecting(tiny_spec("amft", device="cuda", dtype=dtype), tmp_path)
    assert result.status == "completed"
    for p in points:
        assert all(math.isfinite(v) for v in p.values() if isinstance(v, float)), p
        assert 0.0 <= p["mu"] <= 1.0
    rng = load_file(str(result.last_checkpoint / "rng.safetensors"))
    assert "cuda.rank0" in rng


def test_cuda_resume_matches_uninterrupted_run(tmp_path):
    spec = tiny_spec("amft", total_steps=12, save_every=6, device="cuda")
    _, straight, _ = run_collecting(spec, tmp_path / "straight")
    _, first, checkpoints = run_collecting(spec, tmp_path / "split", stop_after=6)
    _, second, _ = run_collecting(spec, tmp_path / "split", resume_from=checkpoints[-1][1])
    for a, b in zip(straight, first + second):
        assert a["mu"] == pytest.approx(b["mu"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prompt_pass_matches_full_pass_on_cuda(dtype):
    from tests.workers.trainer.test_batching import _grouped_batch, _logprob_sum_and_grads
    from workers.trainer.batching import _full_pass_logits, completion_logits
    from workers.trainer.models import build_tiny_model

    model = build_tiny_model().to("cuda", dtype)
    batch = _grouped_batch().to("cuda")
    shared, shared_grads = _logprob_sum_and_grads(model, batch, completion_logits)
    full, full_grads = _logprob_sum_and_grads(model, batch, _full_pass_logits)
    mask = batch.completion_mask.bool()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2  # bf16 rounds at ~3 significant digits
    assert (shared[mask].float() - full[mask].float()).abs().max() <= tolerance * full[mask].float().abs().max() + 1e-4
    for a, b in zip(shared_grads, full_grads):
        assert (a.float() - b.float()).abs().max() <= tolerance * b.float().abs().max() + 1e-6
