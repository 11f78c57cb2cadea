"""AMFT's second controller kind (issue 16, item 3): a bandit over a few constant mixes.

The meta-gradient controller acts on a one-step look-ahead of a validation utility. This
one acts on what users read, greedy accuracy on held-out items, over a longer horizon: each
K-step window trains at one of a few mu values (the arms), and the window's reward is the
change in greedy accuracy on a fixed set of validation items across it (paired on the same
items, so most of the item noise cancels). The next window's arm is the one with the best
discounted-UCB score: untried arms first, then the discounted mean gain plus an exploration
bonus. The discount forgets old windows, so the choice can follow a best mix that moves
during training (the case a constant cannot serve).
"""

from __future__ import annotations

import math

from workers.trainer.schedules import MuSchedule


class BanditController(MuSchedule):
    """mu = 1 during the warm-up, then one of `arms` per `window` steps, chosen by discounted UCB."""

    def __init__(self, warmup_steps: int, arms: list[float], window: int, exploration: float, discount: float):
        super().__init__(arms[0], warmup_steps)
        self.arms, self.window = list(arms), window
        self.exploration, self.discount = exploration, discount
        self.chosen = 0
        self.weights = [0.0] * len(arms)  # discounted count of windows per arm
        self.gains = [0.0] * len(arms)  # discounted sum of accuracy gains per arm
        self.last_score: float | None = None
        self._report: dict[str, float] = {}

    def mu(self, step: int) -> float:
        return 1.0 if step <= self.warmup_steps else self.arms[self.chosen]

    def possible_mus(self, total_steps: int) -> set[float]:
        """Any arm may be chosen later, whichever is chosen first."""
        return set(self.arms) | ({1.0} if self.warmup_steps else set())

    def wants_score(self, step: int) -> bool:
        """The end of the warm-up (the first baseline) and the end of every window."""
        return step >= self.warmup_steps and (step - self.warmup_steps) % self.window == 0 and step > 0

    def observe(self, step: int, entropy: float | None, meta_grad: float | None,
                held_out_accuracy: float | None = None) -> None:
        self._report = {}
        if held_out_accuracy is None:
            return
        self._report = {"bandit_score": held_out_accuracy}
        if self.last_score is not None and step > self.warmup_steps:
            self._credit(held_out_accuracy - self.last_score)
        self.last_score = held_out_accuracy
        self.chosen = self._next_arm()

    def _credit(self, gain: float) -> None:
        self.weights = [w * self.discount for w in self.weights]
        self.gains = [g * self.discount for g in self.gains]
        self.weights[self.chosen] += 1.0
        self.gains[self.chosen] += gain
        self._report["bandit_gain"] = gain

    def _next_arm(self) -> int:
        untried = [i for i, w in enumerate(self.weights) if w == 0.0]
        if untried:
            return untried[0]
        total = sum(self.weights)

        def ucb(i: int) -> float:
            return self.gains[i] / self.weights[i] + self.exploration * math.sqrt(2 * math.log(total) / self.weights[i])

        return max(range(len(self.arms)), key=ucb)

    def metrics(self) -> dict[str, float]:
        return self._report

    def state_dict(self) -> dict:
        return {"chosen": self.chosen, "weights": self.weights, "gains": self.gains, "last_score": self.last_score}

    def load_state_dict(self, state: dict) -> None:
        self.chosen, self.last_score = state["chosen"], state["last_score"]
        self.weights, self.gains = list(state["weights"]), list(state["gains"])
