"""The meta-gradient forms against finite differences through real optimizer steps."""

import copy

import pytest
import torch

from workers.trainer.meta_gradient import adam_form, clip_scale, first_order
from workers.trainer.models import build_tiny_model


def mlp_problem():
    """A float64 MLP with three losses standing in for SFT, RL and validation."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    data = [(torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(3)]

    def loss(model, which):
        x, y = data[which]
        return torch.nn.functional.cross_entropy(model(x), y)

    return net, loss


def tiny_problem():
    """builtin:tiny (float64) with next-token NLL on three random token batches."""
    torch.manual_seed(0)
    net = build_tiny_model().double()
    vocab = net.config.vocab_size
    batches = [torch.randint(3, vocab, (2, 12)) for _ in range(3)]

    def loss(model, which):
        # Our own float64 NLL: transformers' loss upcasts to float32, too coarse for the FD.
        ids = batches[which]
        logits = model(input_ids=ids).logits[:, :-1].double()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))

    return net, loss


def grads(model, loss, which):
    params = [p for p in model.parameters() if p.requires_grad]
    return [g.detach() for g in torch.autograd.grad(loss(model, which), params)]


def real_step(model, optimizer, loss, mu, max_norm):
    """One trainer step: grad of mu L_SFT + (1 - mu) L_RL, clip_grad_norm_, AdamW.step."""
    params = [p for p in model.parameters() if p.requires_grad]
    g_sft, g_rl = grads(model, loss, 0), grads(model, loss, 1)
    for p, gs, gr in zip(params, g_sft, g_rl):
        p.grad = mu * gs + (1 - mu) * gr
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def utility_after_step(model, optimizer, loss, mu, max_norm):
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer_copy = torch.optim.AdamW(params, **{k: v for k, v in optimizer.defaults.items() if k in ("lr", "betas", "eps", "weight_decay")})
    # A deep copy: load_state_dict keeps the very tensors, and step() would advance the original.
    optimizer_copy.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    norm = real_step(model, optimizer_copy, loss, mu, max_norm)
    with torch.no_grad():
        return -loss(model, 2).item(), norm


# AdamW's very first step is lr * g/(|g| + eps), nearly sign(g): its derivative lives only
# where |g| ~ eps, which a finite difference cannot resolve; so the moments are built first
# by three real steps, as on every step of training after the first.
@pytest.mark.parametrize(
    "problem, max_norm",
    [(mlp_problem, 0.05), (mlp_problem, 1e6), (tiny_problem, 0.05)],
    ids=["mlp-clipped", "mlp-unclipped", "tiny-clipped"],
)
def test_adam_form_matches_finite_difference_through_real_adamw_step(problem, max_norm):
    model, loss = problem()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    for _ in range(3):  # moments from earlier steps, as in training
        real_step(model, optimizer, loss, 0.3, max_norm)
    mu, h = 0.6, 1e-3
    up, norm = utility_after_step(model, optimizer, loss, mu + h, max_norm)
    down, _ = utility_after_step(model, optimizer, loss, mu - h, max_norm)
    assert (norm > max_norm) == (max_norm < 1)  # clipping active exactly in the clipped case
    finite_difference = (up - down) / (2 * h)

    g_val, g_sft, g_rl = grads(model, loss, 2), grads(model, loss, 0), grads(model, loss, 1)
    analytic = adam_form(g_val, g_sft, g_rl, mu, optimizer, params, max_norm)
    assert analytic != 0
    assert analytic == pytest.approx(finite_difference, rel=0.03)


def test_adam_form_differs_from_the_sgd_lookahead():
    """raw models theta - lr g: a different step, so a different (here much smaller) value."""
    model, loss = mlp_problem()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for _ in range(3):
        real_step(model, optimizer, loss, 0.3, 1.0)
    g_val, g_sft, g_rl = grads(model, loss, 2), grads(model, loss, 0), grads(model, loss, 1)
    adam = adam_form(g_val, g_sft, g_rl, 0.6, optimizer, params, 1.0)
    raw = first_order(g_val, g_sft, g_rl, "raw", lr=1e-4)
    assert abs(adam) > 3 * abs(raw)


def test_clip_scale_follows_torch_rule_and_its_derivative():
    # |g| = 5 with c = 1: s = 1 / (5 + 1e-6); d|g|/dmu = <g, d>/|g| = 10/5 = 2.
    scale, dscale = clip_scale(25.0, 10.0, 1.0)
    assert scale == pytest.approx(1 / 5.000001)
    assert dscale == pytest.approx(-1 / 25 * 2, rel=1e-5)
    assert clip_scale(0.25, 10.0, 1.0) == (1.0, 0.0)  # inactive: no dependence on mu
