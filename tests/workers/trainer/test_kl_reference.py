"""The KL reference is the policy after the SFT warm-up (issue 16), also across a resume;
`kl_reference: initial` keeps the model as it was loaded."""

import torch

from service.specs import JobSpec
from workers.trainer.hooks import TrainerHooks
from workers.trainer.loop import run_steps, setup


def spec(kl_reference: str = "after_warmup") -> JobSpec:
    return JobSpec.model_validate({
        "method": "sft_then_grpo", "model": "builtin:tiny",
        "training": {"total_steps": 3, "warmup_steps": 2, "learning_rate": 1e-3, "sft_batch_size": 4,
                     "rl_prompts_per_step": 2, "num_generations": 2, "max_completion_tokens": 8, "save_every": 2,
                     "kl_beta": 0.1, "kl_reference": kl_reference, "device": "cpu"},
    })


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def run_recording(run, out_dir, resume_from=None):
    """Run to the end; return the policy's weights as they were after each step."""
    after: dict[int, list[torch.Tensor]] = {}
    hooks = TrainerHooks(on_metrics=lambda point: after.__setitem__(point["step"], weights(run.model)))
    run_steps(run, out_dir, hooks, resume_from)
    return after


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_reference_is_the_policy_after_warm_up_and_survives_a_resume(tmp_path):
    run = setup(spec())
    initial = weights(run.model)
    after = run_recording(run, tmp_path)
    assert not same(after[2], initial)  # the warm-up moved the weights
    assert same(weights(run.reference), after[2])

    resumed = setup(spec())
    run_recording(resumed, tmp_path, resume_from=tmp_path / "checkpoints" / "step-000002")
    assert same(weights(resumed.reference), after[2])


def test_initial_reference_is_the_loaded_model(tmp_path):
    run = setup(spec("initial"))
    initial = weights(run.model)
    run_recording(run, tmp_path)
    assert same(weights(run.reference), initial)
