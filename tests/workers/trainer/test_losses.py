"""Losses and advantages against values computed by hand."""

import math

import pytest
import torch

from workers.trainer import losses


def test_token_logprobs_of_uniform_logits_is_minus_log_vocab():
    logits = torch.zeros(1, 2, 3)  # [B=1, C=2, V=3]
    targets = torch.tensor([[0, 2]])
    assert torch.allclose(losses.token_logprobs(logits, targets), torch.full((1, 2), -math.log(3)))


def test_token_logprobs_picks_the_target_token():
    logits = torch.tensor([[[math.log(3.0), 0.0]]])  # p = [3/4, 1/4]
    assert losses.token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))


def test_token_entropy_uniform_and_peaked():
    uniform = torch.zeros(1, 1, 4)
    peaked = torch.tensor([[[100.0, 0.0, 0.0, 0.0]]])
    assert losses.token_entropy(uniform).item() == pytest.approx(math.log(4))
    assert losses.token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_sft_loss_is_token_mean_nll_over_the_mask():
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the -9 is padding
    assert losses.sft_loss(logprobs, mask).item() == pytest.approx(2.0)


def test_group_advantages_normalise_each_group_and_flag_zero_signal():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # two groups of G=4
    adv, zero_signal = losses.group_advantages(rewards, group_size=4, scale=True)
    std = math.sqrt((4 * 0.25) / 3)  # unbiased std of [1, 0, 0, 1]
    expected = 0.5 / (std + 1e-4)
    assert torch.allclose(adv[:4], torch.tensor([expected, -expected, -expected, expected]))
    assert torch.equal(adv[4:], torch.zeros(4))  # all-equal group: no signal, no NaN
    assert zero_signal.tolist() == [False, True]


def test_group_advantages_unscaled_are_centred_rewards():
    adv, zero_signal = losses.group_advantages(torch.tensor([2.0, 0.0, 0.0, 0.0]), 2, scale=False)
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]
    assert zero_signal.tolist() == [False, True]


def test_grpo_loss_at_ratio_one_is_minus_token_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0], [-1.0, -5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    loss, stats = losses.grpo_loss(logprobs, logprobs.detach(), advantages, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1 - 1 + 1) / 3)
    loss.backward()
    # d loss / d logprob = -A / (number of real tokens): the plain policy gradient.
    expected = torch.tensor([[-1 / 3, -1 / 3], [1 / 3, 0.0]])
    assert torch.allclose(logprobs.grad, expected)
    assert stats == {"clip_frac": 0.0, "kl": 0.0}


def test_grpo_loss_clips_pessimistically():
    old = torch.zeros(1, 3)
    # ratios 1.5 (A>0: clipped to 1.2), 0.5 (A<0: clipped to 0.8), 1.5 (A<0: unclipped is lower).
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5]]))
    per_token = []
    for i, a in enumerate([1.0, -1.0, -1.0]):
        mask = torch.zeros(1, 3)
        mask[0, i] = 1.0
        loss, stats = losses.grpo_loss(new, old, torch.tensor([a]), mask, clip_eps=0.2)
        per_token.append((loss.item(), stats["clip_frac"]))
    assert per_token[0] == (pytest.approx(-1.2), 1.0)
    assert per_token[1] == (pytest.approx(0.8), 1.0)
    assert per_token[2] == (pytest.approx(1.5), 0.0)


def test_grpo_kl_term_uses_k3_estimator():
    logprobs = torch.zeros(1, 1)
    ref = torch.full((1, 1), math.log(2.0))
    mask = torch.ones(1, 1)
    loss, stats = losses.grpo_loss(logprobs, logprobs, torch.zeros(1), mask, 0.2, ref, kl_beta=0.5)
    k3 = 2.0 - math.log(2.0) - 1.0
    assert stats["kl"] == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.5 * k3)
