"""The mu schedules: the one switch between training methods (DESIGN §2).

Every method is the same loop with loss mu * L_SFT + (1 - mu) * L_RL; the schedule says
what mu is at each step and, for AMFT, how it moves. `make_schedule` picks one at setup.
Steps are 1-based: step s is the s-th optimizer step.
"""

from __future__ import annotations

import math
from typing import Literal

from service.specs import JobSpec
from workers.trainer.meta_gradient import MetaWindow

Phase = Literal["warmup", "main"]
EntropyRule = Literal["below_target", "deviation"]


class MuSchedule:
    """A constant mu; the base the other schedules override."""

    def __init__(self, mu: float, warmup_steps: int = 0):
        self.constant = mu
        self.warmup_steps = warmup_steps

    def mu(self, step: int) -> float:
        """The weight of the SFT loss at this step."""
        return 1.0 if step <= self.warmup_steps else self.constant

    def possible_mus(self, total_steps: int) -> set[float]:
        """Every mu this schedule can take in a run (which data the run must load)."""
        return {self.mu(step) for step in range(1, total_steps + 1)}

    def phase(self, step: int) -> Phase:
        return "warmup" if step <= self.warmup_steps else "main"

    def wants_meta(self, step: int) -> bool:
        """Whether this step must compute a sample of the meta-gradient."""
        return False

    def wants_validation(self, step: int) -> bool:
        """Whether this step must take a fresh validation gradient for its meta samples."""
        return False

    def reuses_validation(self, step: int) -> bool:
        """Whether step's meta samples use the validation gradient an earlier step took
        (a checkpoint before it must keep that gradient for a resume to replay the window)."""
        return self.wants_meta(step) and not self.wants_validation(step)

    def wants_score(self, step: int) -> bool:
        """Whether this step must end with greedy accuracy on held-out items (the bandit's reward)."""
        return False

    def metrics(self) -> dict[str, float]:
        """The schedule's own metrics for the step just observed (AMFT: meta_snr, ...)."""
        return {}

    @property
    def target_entropy(self) -> float | None:
        return None

    def observe(self, step: int, entropy: float | None, meta_grad: float | None,
                held_out_accuracy: float | None = None) -> None:
        """Take this step's rollout entropy, meta-gradient sample and held-out score (each
        None where the step has none) after the step; no-op here."""

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
    """AMFT: mu <- clip(mu + entropy term + [end of every K-step window] meta move, mu_min, mu_max).

    Entropy term, every main step (`entropy_rule`): `below_target` is the paper's
    eta_H (H* - H_t): entropy below the target raises mu, above it lowers mu. `deviation` is
    eta_H |H_t - H*| / H*: any relative departure from the warm-up's entropy raises mu (more
    imitation). The stability runs saw collapsing GRPO runs *gain* entropy
    (bench/results/algorithms_stability.md), which `below_target` answers by lowering mu.
    With target_entropy None, H* is the entropy of the first main step's rollouts.

    Meta term: every main step adds one sample of m_t = dU/dmu (meta_gradient.py) to the
    window; at the window's end mu moves by eta_meta up the mean's sign if the mean is at
    least min_z standard errors from zero (MetaWindow), and the window's snr is reported.
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
        min_z: float = 0.0,
        entropy_rule: EntropyRule = "below_target",
    ):
        super().__init__(mu0, warmup_steps)
        self.current = min(max(mu0, mu_min), mu_max)
        self.mu_min, self.mu_max = mu_min, mu_max
        self.eta_entropy, self.eta_meta = eta_entropy, eta_meta
        self.meta_interval = meta_interval
        self._target = target_entropy
        self.window = MetaWindow(min_z)
        self.entropy_rule = entropy_rule
        self._report: dict[str, float] = {}

    def mu(self, step: int) -> float:
        return 1.0 if step <= self.warmup_steps else self.current

    def wants_meta(self, step: int) -> bool:
        """Every main step samples m_t when the meta term is on."""
        return self.eta_meta > 0 and step > self.warmup_steps

    def wants_validation(self, step: int) -> bool:
        """A window's first step takes a fresh validation gradient."""
        return self.wants_meta(step) and (step - self.warmup_steps - 1) % self.meta_interval == 0

    @property
    def target_entropy(self) -> float | None:
        return self._target

    def observe(self, step: int, entropy: float | None, meta_grad: float | None,
                held_out_accuracy: float | None = None) -> None:
        self._report = {}
        if step <= self.warmup_steps:
            return
        delta = 0.0
        if entropy is not None:
            if self._target is None:
                self._target = entropy
            delta += self.eta_entropy * self._entropy_pull(entropy)
        if meta_grad is not None:
            self.window.add(meta_grad)
        if self.eta_meta > 0 and (step - self.warmup_steps) % self.meta_interval == 0:
            direction, self._report = self.window.close()
            delta += self.eta_meta * direction
        self.current = min(max(self.current + delta, self.mu_min), self.mu_max)

    def _entropy_pull(self, entropy: float) -> float:
        if self.entropy_rule == "deviation":
            return abs(entropy - self._target) / max(self._target, 1e-8)
        return self._target - entropy

    def metrics(self) -> dict[str, float]:
        return self._report

    def state_dict(self) -> dict:
        return {"mu": self.current, "target_entropy": self._target, "meta_samples": list(self.window.samples)}

    def load_state_dict(self, state: dict) -> None:
        self.current = state["mu"]
        self._target = state["target_entropy"]
        self.window.samples = list(state.get("meta_samples", []))


# mu = 1 would be absorbing: a step at mu = 1 samples no rollouts, so there is neither an
# entropy H_t nor a meta step to move mu off it. The controller keeps RL's weight above 0.
AMFT_MU_CEILING = 1.0 - 1e-3


def make_schedule(spec: JobSpec) -> MuSchedule:
    """The schedule for the spec's method, chosen once at setup."""
    t, c = spec.training, spec.controller
    if spec.method == "amft" and c.kind == "bandit":
        from workers.trainer.bandit import BanditController  # it subclasses MuSchedule

        return BanditController(t.warmup_steps, c.bandit_arms, c.meta_interval, c.bandit_exploration,
                                c.bandit_discount)
    if spec.method == "amft":
        target = None if c.target_entropy == "auto" else float(c.target_entropy)
        mu_max = min(c.mu_max, AMFT_MU_CEILING)
        return AmftController(
            t.warmup_steps, c.mu0, min(c.mu_min, mu_max), mu_max, c.eta_H, c.eta_meta, c.meta_interval, target,
            c.meta_min_z, c.entropy_rule,
        )
    if spec.method == "chord":
        return ChordSchedule(t.warmup_steps, t.total_steps, c.mu_max, c.mu_min)
    if spec.method == "sft_then_grpo":
        return MuSchedule(0.0, warmup_steps=t.warmup_steps)
    constant = {"sft": 1.0, "grpo": 0.0, "fixed": c.fixed_mu}[spec.method]
    return MuSchedule(constant)
