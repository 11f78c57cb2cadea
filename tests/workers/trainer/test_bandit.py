"""AMFT's bandit controller (controller.kind bandit, issue 16 item 3): its choice rule, and a
real run on the tiny model that scores held-out items, switches arms and resumes exactly."""

import pytest

from service.data_checks import validation_fields
from service.specs import JobSpec
from tests.workers.trainer.test_loop import run_collecting, tiny_spec
from workers.trainer.bandit import BanditController
from workers.trainer.schedules import make_schedule


def bandit(arms=(0.5, 0.9), discount=1.0, exploration=0.0) -> BanditController:
    return BanditController(warmup_steps=2, arms=list(arms), window=3, exploration=exploration, discount=discount)


def feed(controller: BanditController, scores: list[float]) -> list[float]:
    """Score at the warm-up's end, then at every window's end; the mu each window trained at."""
    mus = []
    controller.observe(2, None, None, scores[0])
    for window, score in enumerate(scores[1:]):
        end = 2 + 3 * (window + 1)
        mus.append(controller.mu(end))
        for step in range(end - 2, end):
            controller.observe(step, 0.1, None, None)  # steps inside a window change nothing
        controller.observe(end, 0.1, None, score)
    return mus


def test_tries_every_arm_then_keeps_the_one_whose_windows_gained_most():
    # 0.5 gains 0.10, 0.9 gains 0.02: after one try each, the bandit stays on 0.5.
    controller = bandit()
    mus = feed(controller, [0.30, 0.40, 0.42, 0.52, 0.62])
    assert mus == [0.5, 0.9, 0.5, 0.5]
    assert controller.metrics() == {"bandit_score": 0.62, "bandit_gain": pytest.approx(0.10)}


def test_discount_lets_it_follow_a_best_arm_that_moves():
    # 0.5 pays early, then stops paying; 0.9 keeps a small steady gain. Forgetting old
    # windows (discount 0.5) moves the bandit to 0.9; remembering them (1.0) keeps it on 0.5.
    def run(discount: float) -> list[float]:
        controller, score, mus = bandit(discount=discount), 0.3, []
        controller.observe(2, None, None, score)
        for window in range(10):
            end = 5 + 3 * window
            mu = controller.mu(end)
            mus.append(mu)
            score += (0.2 if window < 3 else -0.01) if mu == 0.5 else 0.01
            controller.observe(end, None, None, score)
        return mus

    assert run(0.5)[-3:] == [0.9, 0.9, 0.9]
    assert run(1.0)[-3:] == [0.5, 0.5, 0.5]


def test_state_round_trips_and_warm_up_is_pure_sft():
    controller = bandit(exploration=0.05)
    feed(controller, [0.3, 0.4, 0.35, 0.5])
    copy = bandit(exploration=0.05)
    copy.load_state_dict(controller.state_dict())
    assert copy.mu(20) == controller.mu(20) and copy.state_dict() == controller.state_dict()
    assert controller.mu(1) == controller.mu(2) == 1.0
    assert [s for s in range(1, 15) if controller.wants_score(s)] == [2, 5, 8, 11, 14]
    # Every arm's data is loaded up front, even one the first window does not train at.
    assert bandit(arms=(0.0, 0.5)).possible_mus(20) == {1.0, 0.0, 0.5}
    assert BanditController(0, [0.0, 0.5], 3, 0.0, 1.0).possible_mus(20) == {0.0, 0.5}


def test_spec_picks_the_bandit_and_its_validation_needs():
    spec = JobSpec.model_validate({"method": "amft", "controller": {"kind": "bandit", "eta_meta": 0.0,
                                                                    "bandit_arms": [0.3, 0.6]}})
    assert isinstance(make_schedule(spec), BanditController)
    assert "answer" in validation_fields(spec)
    with pytest.raises(ValueError, match="bandit_arms"):
        JobSpec.model_validate({"method": "amft", "controller": {"kind": "bandit", "bandit_arms": [0.5, 1.0]}})


def test_a_bandit_job_scores_held_out_items_switches_arms_and_resumes_exactly(tmp_path):
    controller = {"kind": "bandit", "bandit_arms": [0.4, 0.8], "meta_interval": 2, "bandit_eval_items": 4,
                  "eta_meta": 0.0, "eta_H": 0.0}
    spec = tiny_spec("amft", controller=controller, total_steps=10, save_every=5)
    _, straight, _ = run_collecting(spec, tmp_path / "straight")
    assert [p["step"] for p in straight if "bandit_score" in p] == [2, 4, 6, 8, 10]
    assert all(0.0 <= p["bandit_score"] <= 1.0 for p in straight if "bandit_score" in p)
    # Each arm is tried once first (steps 3-4 at 0.4, 5-6 at 0.8), then one of them.
    assert [p["mu"] for p in straight] [:6] == [1.0, 1.0, 0.4, 0.4, 0.8, 0.8]
    assert {p["mu"] for p in straight[6:]} <= {0.4, 0.8}

    # The checkpoint after step 5 is mid-window: the arm and the last score come back with it.
    stopped, first, checkpoints = run_collecting(spec, tmp_path / "split", stop_after=5)
    _, second, _ = run_collecting(spec, tmp_path / "split", resume_from=checkpoints[-1][1])
    for a, b in zip(straight, first + second):
        assert (a["step"], a["mu"], a.get("bandit_score")) == (b["step"], b["mu"], b.get("bandit_score"))
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
