"""The losses and advantages of DESIGN §2, as small pure functions.

Shapes: B = sequences in the batch, C = completion positions (padded), V = vocabulary,
P = prompts, G = completions per prompt (B = P * G for RL batches).
Masks are float tensors of 0/1 marking real completion tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token: logits [B, C, V], targets [B, C] -> [B, C]."""
    # cross_entropy is fused and never materialises a second [B, C, V] log-softmax tensor.
    flat = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return -flat.view_as(targets)


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each position's distribution: logits [B, C, V] -> [B, C]."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)  # [B, C]
    probs = torch.softmax(logits, dim=-1)  # [B, C, V]
    return log_z - (probs * logits).sum(dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens the mask keeps (all sequences pooled): [B, C], [B, C] -> []."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood of the expert tokens: [B, C], [B, C] -> []."""
    return -masked_mean(logprobs, mask)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages (r - mean_group) / (std_group + eps).

    rewards [P * G] (groups contiguous) -> (advantages [P * G], zero_signal [P] bool).
    A group whose rewards are all equal has zero advantage everywhere: it carries no signal,
    and zero_signal marks it so the loop can report the fraction.
    """
    grouped = rewards.view(-1, group_size)  # [P, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        # Unbiased std, as GRPO and TRL use; G >= 2 is enforced by the spec.
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    zero_signal = (grouped.max(dim=1).values - grouped.min(dim=1).values) == 0
    return centred.flatten(), zero_signal


class SamplingLogprobs:
    """The sampling policy's token log-probabilities of one rollout batch: PPO's old policy.

    With several updates per rollout batch (`num_iterations`), the first update's forward
    pass runs on the very weights that sampled the batch, so its detached log-probabilities
    are the old ones; they are kept per micro-batch for the later updates, where the ratio
    exp(new - old) leaves 1 and clip_eps bounds it. No extra forward pass is needed.
    """

    def __init__(self) -> None:
        self.by_part: dict[int, torch.Tensor] = {}  # micro-batch start -> [B, C]

    def old(self, part: int, logprobs: torch.Tensor) -> torch.Tensor:
        """The old log-probabilities of micro-batch `part`; the first call takes `logprobs`' own."""
        if part not in self.by_part:
            self.by_part[part] = logprobs.detach()
        return self.by_part[part]


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    ref_logprobs: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clipped policy loss, token-level mean over the batch, optional KL to a reference.

    logprobs, old_logprobs, mask, ref_logprobs: [B, C]; advantages: [B].
    Returns (loss [], {"clip_frac", "kl"}). With old_logprobs = logprobs.detach() (the
    first update on a rollout batch) the ratio is 1 and this is the plain policy gradient.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # [B, C]
    adv = advantages.unsqueeze(1)  # [B, 1]
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)  # [B, C]
    kl_value = 0.0
    if ref_logprobs is not None and kl_beta > 0:
        # k3 estimator of KL(pi || ref): unbiased and always >= 0.
        log_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1.0
        per_token = per_token + kl_beta * kl
        kl_value = masked_mean(kl, mask).item()
    with torch.no_grad():
        # Clipped only where the min picked the clipped branch (its gradient is then zero).
        was_clipped = (clipped < unclipped).float()
        clip_frac = masked_mean(was_clipped, mask).item()
    return masked_mean(per_token, mask), {"clip_frac": clip_frac, "kl": kl_value}
