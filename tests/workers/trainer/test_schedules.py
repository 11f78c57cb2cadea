"""The mu schedules, the AMFT controller and the meta-gradient's sign and size."""

import pytest
import torch

from service.specs import JobSpec
from workers.trainer.meta_gradient import MetaWindow, first_order
from workers.trainer.schedules import AmftController, ChordSchedule, MuSchedule, make_schedule


def controller(**overrides) -> AmftController:
    args = dict(warmup_steps=0, mu0=0.5, mu_min=0.1, mu_max=0.9, eta_entropy=0.1, eta_meta=0.0,
                meta_interval=5, target_entropy=1.0)
    return AmftController(**(args | overrides))


def test_entropy_below_target_raises_mu():
    c = controller()
    c.observe(1, entropy=0.5, meta_grad=None)
    assert c.mu(2) == pytest.approx(0.5 + 0.1 * 0.5)


def test_entropy_above_target_lowers_mu():
    c = controller()
    c.observe(1, entropy=1.5, meta_grad=None)
    assert c.mu(2) == pytest.approx(0.5 - 0.1 * 0.5)


def test_mu_is_clipped_to_its_bounds():
    c = controller(eta_entropy=10.0)
    c.observe(1, entropy=0.0, meta_grad=None)
    assert c.mu(2) == 0.9
    c.observe(2, entropy=5.0, meta_grad=None)
    assert c.mu(3) == 0.1


def test_meta_term_moves_mu_up_its_gradient_at_window_end():
    c = controller(eta_entropy=0.0, eta_meta=0.2, meta_interval=2, min_z=2.0)
    c.observe(1, entropy=1.0, meta_grad=0.5)
    assert c.mu(2) == 0.5  # mid-window: no move
    c.observe(2, entropy=1.0, meta_grad=0.6)  # mean 0.55, SE 0.05: t = 11
    assert c.mu(3) == pytest.approx(0.7)
    assert c.metrics()["meta_snr"] == pytest.approx(11.0)
    c.observe(3, entropy=1.0, meta_grad=-1.0)
    c.observe(4, entropy=1.0, meta_grad=-1.2)
    assert c.mu(5) == pytest.approx(0.5)


def test_meta_term_holds_mu_when_the_window_mean_is_within_noise():
    c = controller(eta_entropy=0.0, eta_meta=0.2, meta_interval=4, min_z=2.0)
    for step, sample in enumerate([0.5, -0.4, 0.6, -0.5], start=1):
        c.observe(step, entropy=1.0, meta_grad=sample)
    assert c.mu(5) == 0.5
    report = c.metrics()
    assert abs(report["meta_snr"]) < 2.0 and report["meta_samples"] == 4


def test_meta_window_snr_is_mean_over_standard_error():
    window = MetaWindow(min_z=1.0)
    for x in (1.0, 2.0, 3.0):
        window.add(x)
    direction, report = window.close()
    # mean 2, sd 1, SE 1/sqrt(3): t = 2 sqrt(3)
    assert direction == 1 and report["meta_snr"] == pytest.approx(2 * 3**0.5)
    assert window.close() == (0, {})  # a new, empty window


def test_deviation_rule_raises_mu_when_entropy_rises_or_falls():
    for entropy in (1.5, 0.5):
        c = controller(entropy_rule="deviation")
        c.observe(1, entropy=entropy, meta_grad=None)
        assert c.mu(2) == pytest.approx(0.5 + 0.1 * 0.5)


def test_warmup_is_pure_sft_and_auto_target_is_first_main_entropy():
    c = controller(warmup_steps=3, target_entropy=None)
    assert [c.mu(s) for s in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert [c.phase(s) for s in (3, 4)] == ["warmup", "main"]
    c.observe(3, entropy=None, meta_grad=None)  # warm-up steps sample nothing
    assert c.target_entropy is None
    c.observe(4, entropy=2.5, meta_grad=None)
    assert c.target_entropy == 2.5
    assert c.mu(5) == 0.5  # at the target: no entropy pull on the first main step


def test_meta_samples_every_main_step_and_validation_at_window_starts():
    c = controller(warmup_steps=2, eta_meta=0.1, meta_interval=3)
    assert [s for s in range(1, 12) if c.wants_meta(s)] == list(range(3, 12))
    assert [s for s in range(1, 12) if c.wants_validation(s)] == [3, 6, 9]
    assert not any(controller(eta_meta=0.0).wants_meta(s) for s in range(1, 20))


def test_controller_state_round_trips():
    c = controller(target_entropy=None)
    c.observe(1, entropy=0.7, meta_grad=None)
    c.observe(2, entropy=0.2, meta_grad=None)
    restored = controller(target_entropy=None)
    restored.load_state_dict(c.state_dict())
    assert (restored.mu(3), restored.target_entropy) == (c.mu(3), c.target_entropy)


def test_fixed_switch_and_chord_schedules():
    assert [MuSchedule(0.0, warmup_steps=2).mu(s) for s in (1, 2, 3, 4)] == [1.0, 1.0, 0.0, 0.0]
    chord = ChordSchedule(warmup_steps=2, total_steps=12, mu_max=0.9, mu_min=0.1)
    assert chord.mu(2) == 1.0
    assert chord.mu(3) == pytest.approx(0.9)
    assert chord.mu(12) == pytest.approx(0.1)
    mus = [chord.mu(s) for s in range(3, 13)]
    assert mus == sorted(mus, reverse=True)


@pytest.mark.parametrize(
    ("method", "mu_at_step_20"),
    [("sft", 1.0), ("grpo", 0.0), ("fixed", 0.3), ("sft_then_grpo", 0.0), ("amft", 0.8)],
)
def test_make_schedule_picks_the_method(method, mu_at_step_20):
    spec = JobSpec.model_validate(
        {"method": method, "training": {"total_steps": 30, "warmup_steps": 10}, "controller": {"fixed_mu": 0.3}}
    )
    schedule = make_schedule(spec)
    assert schedule.mu(20) == pytest.approx(mu_at_step_20)
    assert schedule.mu(5) == (0.0 if method == "grpo" else 0.3 if method == "fixed" else 1.0)


# ---------------------------------------------------------------- meta-gradient


def quadratic_grads(theta, sft_target, rl_target, val_target):
    """Gradients of |theta - target|^2 for the SFT, RL and validation losses."""
    grads = []
    for target in (val_target, sft_target, rl_target):
        point = theta.clone().requires_grad_(True)
        ((point - target) ** 2).sum().backward()
        grads.append([point.grad])
    return grads


@pytest.mark.parametrize("form", ["cosine", "raw"])
def test_meta_gradient_raises_mu_when_sft_direction_lowers_validation_loss(form):
    theta = torch.zeros(2)
    g_val, g_sft, g_rl = quadratic_grads(theta, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]),
                                         val_target=torch.tensor([1.0, 0.0]))
    m = first_order(g_val, g_sft, g_rl, form, lr=0.1)
    assert m > 0
    c = controller(eta_entropy=0.0, eta_meta=0.1, meta_interval=1)
    c.observe(1, entropy=1.0, meta_grad=m)
    assert c.mu(2) > 0.5


@pytest.mark.parametrize("form", ["cosine", "raw"])
def test_meta_gradient_lowers_mu_when_sft_direction_raises_validation_loss(form):
    theta = torch.zeros(2)
    g_val, g_sft, g_rl = quadratic_grads(theta, torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.0]),
                                         val_target=torch.tensor([1.0, 0.0]))
    m = first_order(g_val, g_sft, g_rl, form, lr=0.1)
    assert m < 0
    c = controller(eta_entropy=0.0, eta_meta=0.1, meta_interval=1)
    c.observe(1, entropy=1.0, meta_grad=m)
    assert c.mu(2) < 0.5


def test_cosine_form_is_bounded_and_scale_free():
    g_val, g_sft, g_rl = [torch.tensor([1.0, 0.0])], [torch.tensor([3.0, 0.0])], [torch.tensor([-1e-6, 0.0])]
    assert first_order(g_val, g_sft, g_rl, "cosine", lr=1e-6) == pytest.approx(2.0)


def test_raw_meta_gradient_matches_finite_difference_of_lookahead_utility():
    """dU(theta')/dmu with theta' = theta - lr (mu g_SFT + (1 - mu) g_RL), U = -L_val."""
    torch.manual_seed(0)
    # float64: the utility differences measured here are far below float32 resolution.
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x_sft, y_sft = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    x_rl, y_rl = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    x_val, y_val = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    params = list(net.parameters())

    def loss_on(x, y, weights=None):
        if weights is not None:
            out = torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], weights)), (x,))
        else:
            out = net(x)
        return torch.nn.functional.cross_entropy(out, y)

    def grads(x, y):
        return list(torch.autograd.grad(loss_on(x, y), params))

    g_sft, g_rl, g_val = grads(x_sft, y_sft), grads(x_rl, y_rl), grads(x_val, y_val)
    lr, mu, h = 1e-3, 0.6, 1e-2

    def utility(m):
        with torch.no_grad():
            stepped = [p - lr * (m * gs + (1 - m) * gr) for p, gs, gr in zip(params, g_sft, g_rl)]
            return -loss_on(x_val, y_val, stepped).item()

    finite_difference = (utility(mu + h) - utility(mu - h)) / (2 * h)
    analytic = first_order(g_val, g_sft, g_rl, "raw", lr)
    assert analytic != 0
    assert analytic == pytest.approx(finite_difference, rel=0.05)
