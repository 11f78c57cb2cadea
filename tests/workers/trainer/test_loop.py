"""The training loop end to end on the tiny model: every method, resume, stop, checkpoints."""

import json

import math

import pytest

from service.specs import JobSpec
from workers.trainer.checkpoint import META_VALIDATION, CheckpointError, latest_valid_checkpoint, verify_checkpoint
from workers.trainer.hooks import TrainerHooks
from workers.trainer.loop import train

ALWAYS = {"step", "phase", "mu", "lr", "loss", "grad_norm", "step_seconds", "gen_seconds",
          "train_seconds", "tokens_per_second"}
RL_KEYS = {"reward_mean", "reward_std", "accuracy", "zero_signal_frac", "rl_loss", "entropy", "kl",
           "clip_frac", "completion_tokens_mean"}


def tiny_spec(method="amft", controller=None, **training) -> JobSpec:
    settings = dict(total_steps=10, warmup_steps=2, learning_rate=1e-3, sft_batch_size=4,
                    rl_prompts_per_step=2, num_generations=4, max_completion_tokens=24, save_every=5)
    return JobSpec.model_validate({
        "method": method,
        "model": "builtin:tiny",
        "training": settings | training,
        "controller": {"meta_interval": 3, "eta_H": 0.01, "fixed_mu": 0.5} | (controller or {}),
    })


def run_collecting(spec, out_dir, resume_from=None, stop_after=None):
    points, checkpoints = [], []
    hooks = TrainerHooks(
        on_metrics=points.append,
        on_checkpoint=lambda step, path: checkpoints.append((step, path)),
        should_stop=lambda: stop_after is not None and points[-1]["step"] >= stop_after,
    )
    result = train(spec, out_dir, hooks, resume_from=resume_from)
    return result, points, checkpoints


@pytest.mark.parametrize("method", ["amft", "sft", "grpo", "sft_then_grpo", "fixed", "chord"])
def test_every_method_runs_ten_steps(method, tmp_path):
    result, points, checkpoints = run_collecting(tiny_spec(method), tmp_path)
    assert result.status == "completed" and result.last_step == 10
    assert [p["step"] for p in points] == list(range(1, 11))
    assert [step for step, _ in checkpoints] == [5, 10]
    for p in points:
        assert ALWAYS <= p.keys()
        assert 0.0 <= p["mu"] <= 1.0
        has_rl = p["mu"] < 1
        assert (RL_KEYS <= p.keys()) == has_rl, f"{method} step {p['step']}: RL metrics iff mu < 1"
        assert ("sft_loss" in p) == (p["mu"] > 0)
    if method == "amft":
        assert [p["phase"] for p in points[:3]] == ["warmup", "warmup", "main"]
        assert all(p["mu"] == 1.0 for p in points[:2])
        assert all(0.05 <= p["mu"] <= 0.95 for p in points[2:])
        assert "target_entropy" in points[-1]
        # One m_t sample every main step; each K = 3 window's test at its end.
        assert [p["step"] for p in points if "meta_grad" in p] == list(range(3, 11))
        assert [p["step"] for p in points if "meta_snr" in p] == [5, 8]
        assert all(math.isfinite(p["meta_snr"]) and p["meta_samples"] == 3 for p in points if "meta_snr" in p)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    # K = 2 with 2 warm-up steps: the checkpoint after step 6 ends a meta window, so it keeps
    # no validation gradient (the next step takes a fresh one).
    spec = tiny_spec("amft", controller={"meta_interval": 2, "meta_form": "adam", "meta_min_z": 0.0},
                     total_steps=12, save_every=6)
    _, straight, _ = run_collecting(spec, tmp_path / "straight")

    stopped, first_half, checkpoints = run_collecting(spec, tmp_path / "split", stop_after=6)
    assert stopped.status == "stopped" and checkpoints[-1][0] == 6
    assert not (checkpoints[-1][1] / META_VALIDATION).exists()
    resumed, second_half, _ = run_collecting(spec, tmp_path / "split", resume_from=checkpoints[-1][1])
    assert resumed.status == "completed"
    assert_same_curve(straight, first_half + second_half, 12)


def test_resume_mid_window_replays_the_window(tmp_path):
    # K = 3 after 2 warm-up steps: windows are steps 3-5 and 6-8, so the checkpoint after step
    # 4 falls mid-window. It keeps the window's validation gradient, which step 5's m_t sample
    # (and so the window's move of mu) must use for the resumed run to be the straight one.
    spec = tiny_spec("amft", controller={"meta_interval": 3, "meta_form": "adam", "meta_min_z": 0.0, "eta_meta": 0.1},
                     total_steps=8, save_every=4)
    _, straight, checkpoints = run_collecting(spec, tmp_path / "straight")
    (_, mid), (_, last) = checkpoints
    assert json.loads((mid / "manifest.json").read_text()).keys() >= {META_VALIDATION}
    assert not (last / META_VALIDATION).exists()  # a completed run is not resumed
    resumed, second_half, _ = run_collecting(spec, tmp_path / "resumed", resume_from=mid)
    assert resumed.status == "completed"
    assert [p["step"] for p in second_half] == [5, 6, 7, 8]
    assert len({p["mu"] for p in straight[2:]}) > 2 and "meta_snr" in straight[4]
    assert_same_curve(straight, straight[:4] + second_half, 8)


def assert_same_curve(straight, split, steps):
    assert [p["step"] for p in split] == list(range(1, steps + 1))
    for a, b in zip(straight, split):
        for key in ("mu", "loss", "sft_loss", "rl_loss", "reward_mean", "entropy", "meta_grad", "meta_mean",
                    "grad_norm"):
            assert (key in a) == (key in b)
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-6), f"step {a['step']} {key}"


def test_should_stop_saves_a_checkpoint_and_stops(tmp_path):
    result, points, checkpoints = run_collecting(tiny_spec("sft"), tmp_path, stop_after=3)
    assert result.status == "stopped" and result.last_step == 3
    assert len(points) == 3 and checkpoints == [(3, result.last_checkpoint)]
    verify_checkpoint(result.last_checkpoint)


def test_checkpoint_holds_resume_state_and_corruption_is_detected(tmp_path):
    result, _, checkpoints = run_collecting(tiny_spec("amft"), tmp_path)
    latest = result.last_checkpoint
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == 10
    assert {"mu", "target_entropy"} <= state["schedule"].keys()
    assert {"sft", "rl", "validation"} <= state["streams"].keys()
    assert not list(latest.rglob("*.bin")) and not list(latest.rglob("*.pt"))
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncate
    with pytest.raises(CheckpointError, match="checksum"):
        verify_checkpoint(latest)
    assert latest_valid_checkpoint(tmp_path) == checkpoints[0][1]


def test_eval_every_records_eval_accuracy(tmp_path):
    spec = tiny_spec("sft", total_steps=4, eval_every=2, eval_limit=8)
    _, points, _ = run_collecting(spec, tmp_path)
    for p in points:
        has_eval = p["step"] in (2, 4)
        assert ("eval_accuracy_id" in p) == has_eval and ("eval_accuracy_ood" in p) == has_eval
        if has_eval:
            assert 0.0 <= p["eval_accuracy_id"] <= 1.0


def test_micro_batches_change_memory_not_maths(tmp_path):
    """Splitting a step's rows into micro-batches gives the same loss and gradient."""
    from workers.trainer.loop import setup, train_step

    points = []
    for rows in (16, 3):
        run = setup(tiny_spec("fixed", total_steps=1, warmup_steps=0, micro_batch_size=rows))
        points.append(train_step(run, 1))
    whole, split = points
    for key in ("loss", "sft_loss", "rl_loss", "entropy", "grad_norm", "reward_mean"):
        assert whole[key] == pytest.approx(split[key], rel=1e-5, abs=1e-6), key


def test_a_step_without_learning_signal_leaves_weights_and_optimizer_alone():
    """SFT steps build Adam momentum; then GRPO steps whose groups all score the same (the
    random tiny model never answers right) have zero gradient and must not move anything."""
    import torch

    from workers.trainer.loop import setup, train_step

    run = setup(tiny_spec("sft_then_grpo", total_steps=4, warmup_steps=2))
    for step in (1, 2):
        assert train_step(run, step)["grad_norm"] > 0
    weights = [p.detach().clone() for p in run.model.parameters()]
    adam_steps = [float(s["step"]) for s in run.optimizer.state.values()]
    for step in (3, 4):
        point = train_step(run, step)
        assert point["mu"] == 0.0 and point["zero_signal_frac"] == 1.0 and point["grad_norm"] == 0.0
    assert all(torch.equal(before, after) for before, after in zip(weights, run.model.parameters()))
    assert [float(s["step"]) for s in run.optimizer.state.values()] == adam_steps
    assert run.lr_scheduler.last_epoch == 4  # the LR schedule still counts every step
