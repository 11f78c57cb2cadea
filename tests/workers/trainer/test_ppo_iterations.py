"""num_iterations (issue 16): several updates per rollout batch give the PPO ratio and
clip_eps a meaning; with one update the ratio is 1 and nothing is clipped."""

import pytest

from service.specs import JobSpec
from workers.trainer.hooks import TrainerHooks
from workers.trainer.loop import train


def grpo_points(tmp_path, num_iterations: int) -> list[dict]:
    spec = JobSpec.model_validate({
        "method": "grpo", "model": "builtin:tiny",
        # A digit anywhere scores 1: the random tiny model's groups then have rewards that differ.
        "reward": [{"kind": "regex", "pattern": "[0-9]"}],
        "training": {"total_steps": 3, "warmup_steps": 0, "learning_rate": 3e-2, "rl_prompts_per_step": 2,
                     "num_generations": 4, "max_completion_tokens": 12, "clip_eps": 0.05, "save_every": 3,
                     "num_iterations": num_iterations, "device": "cpu"},
    })
    points: list[dict] = []
    train(spec, tmp_path / str(num_iterations), TrainerHooks(on_metrics=points.append))
    assert any(p["zero_signal_frac"] < 1 for p in points)  # some groups carried a signal
    return points


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_clip_frac_is_zero_with_one_update_and_positive_with_two(tmp_path, num_iterations):
    points = grpo_points(tmp_path, num_iterations)
    if num_iterations == 1:
        assert all(p["clip_frac"] == 0.0 for p in points)
    else:
        assert max(p["clip_frac"] for p in points) > 0.0
