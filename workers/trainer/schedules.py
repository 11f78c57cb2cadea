"""The mu schedules: the one switch between training methods (DESIGN §2).

Every method is the same loop with loss mu * L_SFT + (1 - mu) * L_RL; the schedule says
what mu is at each step and, for AMFT, how it moves. `make_schedule` picks one at setup.
Steps are 1-based: step s is the s-th optimizer step.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch

from service.specs import JobSpec

Phase = Literal["warmup", "main"]


class MuSchedule:
    """A constant mu; the base the other schedules override."""

    def __init__(self, mu: float, warmup_steps: int = 0):
        self.constant = mu
        self.warmup_steps = warmup_steps

    def mu(self, step: int) -> float:
        """The weight of the SFT loss at this step."""
        return 1.0 if step <= self.warmup_steps else self.constant

    def phase(self, step: int) -> Phase:
        return "warmup" if step <= self.warmup_steps else "main"

    def wants_meta(self, step: int) -> bool:
        """Whether this step must compute the meta-gradient."""
        return False

    @property
    def target_entropy(self) -> float | None:
        return None

    def observe(self, step: int, entropy: float | None, meta_grad: float | None) -> None:
        """Take this step's rollout entropy (and meta-gradient) after the step; no-op here."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class ChordSchedule(MuSchedule):
    """CHORD: pure SFT for the warm-up, then mu decays from mu_max to mu_min by a cosine."""

    def __init__(self, warmup_steps: int, total_steps: int, mu_max: float, mu_min: float):
        super().__init__(mu_max, warmup_steps)
        self.total_steps = total_steps
        self.mu_max, self.mu_min = mu_max, mu_min

    def mu(self, step: int) -> float:
        if step <= self.warmup_steps:
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = (step - self.warmup_steps - 1) / max(span - 1, 1)
        return self.mu_min + 0.5 * (self.mu_max - self.mu_min) * (1 + math.cos(math.pi * progress))


class AmftController(MuSchedule):
    """AMFT: mu <- clip(mu + eta_H (H* - H_t) + [every K steps] eta_meta m_t, mu_min, mu_max).

    Entropy below the target raises mu (more imitation), above it lowers mu (more
    exploration). m_t is the meta-gradient dU/dmu (see meta_gradient); mu ascends it.
    With target_entropy None, H* is the entropy of the first main step's rollouts: those
    are sampled by the policy as the warm-up left it, on RL prompts, which is the
    population H_t is measured on later.
    """

    def __init__(
        self,
        warmup_steps: int,
        mu0: float,
        mu_min: float,
        mu_max: float,
        eta_entropy: float,
        eta_meta: float,
        meta_interval: int,
        target_entropy: float | None,
    ):
        super().__init__(mu0, warmup_steps)
        self.current = min(max(mu0, mu_min), mu_max)
        self.mu_min, self.mu_max = mu_min, mu_max
        self.eta_entropy, self.eta_meta = eta_entropy, eta_meta
        self.meta_interval = meta_interval
        self._target = target_entropy

    def mu(self, step: int) -> float:
        return 1.0 if step <= self.warmup_steps else self.current

    def wants_meta(self, step: int) -> bool:
        if self.eta_meta == 0 or step <= self.warmup_steps:
            return False
        return (step - self.warmup_steps) % self.meta_interval == 0

    @property
    def target_entropy(self) -> float | None:
        return self._target

    def observe(self, step: int, entropy: float | None, meta_grad: float | None) -> None:
        if step <= self.warmup_steps or entropy is None:
            return
        if self._target is None:
            self._target = entropy
        delta = self.eta_entropy * (self._target - entropy)
        if meta_grad is not None:
            delta += self.eta_meta * meta_grad
        self.current = min(max(self.current + delta, self.mu_min), self.mu_max)

    def state_dict(self) -> dict:
        return {"mu": self.current, "target_entropy": self._target}

    def load_state_dict(self, state: dict) -> None:
        self.current = state["mu"]
        self._target = state["target_entropy"]


# mu = 1 would be absorbing: a step at mu = 1 samples no rollouts, so there is neither an
# entropy H_t nor a meta step to move mu off it. The controller keeps RL's weight above 0.
AMFT_MU_CEILING = 1.0 - 1e-3


def make_schedule(spec: JobSpec) -> MuSchedule:
    """The schedule for the spec's method, chosen once at setup."""
    t, c = spec.training, spec.controller
    if spec.method == "amft":
        target = None if c.target_entropy == "auto" else float(c.target_entropy)
        mu_max = min(c.mu_max, AMFT_MU_CEILING)
        return AmftController(
            t.warmup_steps, c.mu0, min(c.mu_min, mu_max), mu_max, c.eta_H, c.eta_meta, c.meta_interval, target
        )
    if spec.method == "chord":
        return ChordSchedule(t.warmup_steps, t.total_steps, c.mu_max, c.mu_min)
    if spec.method == "sft_then_grpo":
        return MuSchedule(0.0, warmup_steps=t.warmup_steps)
    constant = {"sft": 1.0, "grpo": 0.0, "fixed": c.fixed_mu}[spec.method]
    return MuSchedule(constant)


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    # A sum of per-parameter dots; under sharding, over this rank's shards (see meta_gradient).
    return float(sum(torch.sum(x.double() * y.double()) for x, y in zip(a, b)))


def _no_reduce(values: list[float]) -> list[float]:
    return values


def meta_gradient(
    g_val: list[torch.Tensor],
    g_sft: list[torch.Tensor],
    g_rl: list[torch.Tensor],
    form: Literal["cosine", "raw"],
    lr: float,
    sum_over_ranks: Callable[[list[float]], list[float]] = _no_reduce,
) -> float:
    """m_t, the first-order estimate of dU(theta')/dmu for theta' = theta - lr (mu g_SFT + (1-mu) g_RL).

    g_val is the gradient of the validation loss L_val = -U. Differentiating through the
    look-ahead step: dU/dmu = lr * <g_val, g_SFT - g_RL>, positive when the SFT direction
    lowers the validation loss more than the RL direction, so mu should rise.
    `raw` returns that; `cosine` returns cos(g_val, g_SFT) - cos(g_val, g_RL), the same
    sign but scale-free, so one eta_meta works across learning rates and model sizes.
    With sharded parameters each rank passes its own shards and `sum_over_ranks` (an
    all-reduce) turns the five partial dot products into the full ones, on every rank.
    """
    pairs = [(g_val, g_sft), (g_val, g_rl), (g_val, g_val), (g_sft, g_sft), (g_rl, g_rl)]
    dot_sft, dot_rl, sq_val, sq_sft, sq_rl = sum_over_ranks([_dot(a, b) for a, b in pairs])
    if form == "raw":
        return lr * (dot_sft - dot_rl)
    norm_val, norm_sft, norm_rl = math.sqrt(sq_val), math.sqrt(sq_sft), math.sqrt(sq_rl)
    tiny = 1e-12
    return dot_sft / (norm_val * norm_sft + tiny) - dot_rl / (norm_val * norm_rl + tiny)
