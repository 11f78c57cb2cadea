"""mu = 1 is not absorbing for AMFT (issue 16): the controller can always leave it."""

from service.specs import JobSpec
from workers.trainer.schedules import make_schedule


def amft_at_one(**controller) -> JobSpec:
    return JobSpec.model_validate({"method": "amft", "training": {"total_steps": 20, "warmup_steps": 2},
                                   "controller": {"mu0": 1.0, "mu_max": 1.0, "eta_meta": 0.0} | controller})


def test_from_mu_one_a_signal_favouring_rl_moves_mu_below_one():
    schedule = make_schedule(amft_at_one(target_entropy=0.5, eta_H=0.1))
    first = schedule.mu(3)
    # The loop samples rollouts (and can take a meta step) exactly when mu < 1.
    assert first < 1.0
    schedule.observe(3, entropy=1.5, meta_grad=None)  # entropy above target: explore more
    assert schedule.mu(4) < first - 0.05


def test_meta_steps_still_happen_when_mu_max_is_one():
    # One sample per window, so no standard error: meta_min_z = 0 lets it move.
    schedule = make_schedule(amft_at_one(eta_meta=0.5, meta_interval=1, meta_min_z=0.0, eta_H=0.0, target_entropy=1.0))
    assert schedule.mu(3) < 1.0 and schedule.wants_meta(3)
    schedule.observe(3, entropy=1.0, meta_grad=-0.2)  # validation favours the RL direction
    assert schedule.mu(4) < 0.95


def test_warm_up_is_still_pure_sft():
    assert make_schedule(amft_at_one()).mu(1) == 1.0
