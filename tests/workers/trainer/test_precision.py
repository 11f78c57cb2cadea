"""bfloat16 jobs train (issue 16): bf16 autocast over fp32 master weights and AdamW state.

Before, `dtype: bfloat16` cast the parameters and AdamW's state to bf16, and most updates at
lr 1e-5 rounded away (5-14% of weights changed per step). bench/bf16_updates.py measures it."""

import torch

from service.specs import JobSpec
from workers.trainer.loop import setup, train_step


def sft_run(dtype: str):
    return setup(JobSpec.model_validate({
        "method": "sft", "model": "builtin:tiny",
        "training": {"total_steps": 10, "warmup_steps": 0, "learning_rate": 1e-5, "sft_batch_size": 4,
                     "max_completion_tokens": 24, "dtype": dtype, "device": "cpu"},
    }))


def fraction_changed_per_step(run, steps: int = 2) -> float:
    params = [p for p in run.model.parameters() if p.requires_grad]
    changed = 0
    for step in range(1, steps + 1):
        before = [p.detach().clone() for p in params]
        train_step(run, step)
        changed += sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
    return changed / steps / sum(p.numel() for p in params)


def test_bf16_updates_as_many_weights_as_float32_at_lr_1e_5():
    fp32, bf16 = sft_run("float32"), sft_run("bfloat16")
    fp32_fraction, bf16_fraction = fraction_changed_per_step(fp32), fraction_changed_per_step(bf16)
    assert bf16_fraction > 0.9 * fp32_fraction, (bf16_fraction, fp32_fraction)
    # Master weights and AdamW's moments are float32; only the forward pass ran in bf16.
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    moments = [v for state in bf16.optimizer.state.values() for k, v in state.items() if k != "step"]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    with bf16.precision():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
