"""The AMFT meta-gradient m_t ~= dU(theta')/dmu (DESIGN §2), in three forms.

U is the validation utility (L_val = -U, g_val = grad L_val) and theta' the weights after
this step's update with gradient g = mu g_SFT + (1 - mu) g_RL. mu ascends m_t.

- `adam` (the default): theta' is the step the trainer really takes. The summed gradient is
  clipped to max_norm (scale s = min(1, c / (|g| + 1e-6)), torch's rule) and enters AdamW's
  moments; theta' = theta (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps) with the bias
  corrections. dtheta'/dmu is differentiated exactly through the clip scale, both moments and
  the square root (weight decay does not depend on mu). A finite-difference test through a
  real torch.optim.AdamW step pins it (tests/workers/trainer/test_meta_gradient.py).
- `raw`: the textbook first-order form through a plain SGD look-ahead theta' = theta - lr g,
  dU/dmu = lr <g_val, g_SFT - g_RL>. Not the step the trainer takes.
- `cosine`: cos(g_val, g_SFT) - cos(g_val, g_RL). A scale-free heuristic, not the derivative
  of any step: it can disagree in sign with `raw` when |g_SFT| and |g_RL| differ a lot.

Every dot product is a sum over parameters: with sharded parameters each rank passes its own
shards and `sum_over_ranks` (an all-reduce) completes the sums, so every rank gets the same m_t.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch

MetaForm = Literal["adam", "raw", "cosine"]
Reduce = Callable[[list[float]], list[float]]
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6)


def _no_reduce(values: list[float]) -> list[float]:
    return values


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(torch.sum(x.double() * y.double()) for x, y in zip(a, b)))


def first_order(
    g_val: list[torch.Tensor], g_sft: list[torch.Tensor], g_rl: list[torch.Tensor],
    form: Literal["raw", "cosine"], lr: float, sum_over_ranks: Reduce = _no_reduce,
) -> float:
    """The `raw` (SGD look-ahead) or `cosine` (normalised heuristic) form; see the module doc."""
    pairs = [(g_val, g_sft), (g_val, g_rl), (g_val, g_val), (g_sft, g_sft), (g_rl, g_rl)]
    dot_sft, dot_rl, sq_val, sq_sft, sq_rl = sum_over_ranks([_dot(a, b) for a, b in pairs])
    if form == "raw":
        return lr * (dot_sft - dot_rl)
    norm_val, norm_sft, norm_rl = math.sqrt(sq_val), math.sqrt(sq_sft), math.sqrt(sq_rl)
    tiny = 1e-12
    return dot_sft / (norm_val * norm_sft + tiny) - dot_rl / (norm_val * norm_rl + tiny)


def clip_scale(norm_sq: float, g_dot_d: float, max_norm: float | None) -> tuple[float, float]:
    """(s, ds/dmu) for the clip scale s = min(1, c / (|g| + 1e-6)), with d|g|/dmu = <g, d> / |g|."""
    norm = math.sqrt(norm_sq)
    if max_norm is None or norm == 0:
        return 1.0, 0.0
    coef = max_norm / (norm + CLIP_EPS)
    if coef >= 1.0:
        return 1.0, 0.0
    return coef, -max_norm / (norm + CLIP_EPS) ** 2 * g_dot_d / norm


def adam_step_derivative(
    g_sft: torch.Tensor, g_rl: torch.Tensor, mu: float, scale: float, dscale: float,
    exp_avg: torch.Tensor | None, exp_avg_sq: torch.Tensor | None, step: int, group: dict,
) -> torch.Tensor:
    """-dtheta'/dmu / lr for one parameter: d(m_hat / (sqrt(v_hat) + eps))/dmu, in float64."""
    beta1, beta2 = group["betas"]
    g_s, g_r = g_sft.double(), g_rl.double()
    g = mu * g_s + (1 - mu) * g_r
    clipped = scale * g
    dclipped = scale * (g_s - g_r) + dscale * g
    m = clipped * (1 - beta1) if exp_avg is None else beta1 * exp_avg.double() + (1 - beta1) * clipped
    v = clipped.square() * (1 - beta2) if exp_avg_sq is None else beta2 * exp_avg_sq.double() + (1 - beta2) * clipped.square()
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    root = (v / bc2).sqrt()  # sqrt(v_hat)
    denom = root + group["eps"]
    dm_hat = (1 - beta1) / bc1 * dclipped
    # d sqrt(v_hat) = (1 - beta2)/bc2 * g_c dg_c / sqrt(v_hat); where v_hat = 0, g_c = 0 too.
    droot = torch.where(root > 0, (1 - beta2) / bc2 * clipped * dclipped / root.clamp_min(1e-300), torch.zeros_like(root))
    return dm_hat / denom - (m / bc1) * droot / denom.square()


def adam_form(
    g_val: list[torch.Tensor], g_sft: list[torch.Tensor], g_rl: list[torch.Tensor], mu: float,
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], max_norm: float | None,
    local: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda tensors: tensors,
    sum_over_ranks: Reduce = _no_reduce,
) -> float:
    """dU/dmu through the clipped AdamW step the optimizer is about to take (module doc).

    g_* are this rank's gradient shards (`local` already applied); params are the optimizer's
    parameters in the same order, whose AdamW state `local` turns into shards likewise.
    Call before optimizer.step(): the moments and step count are the pre-step ones.
    """
    g = [mu * s + (1 - mu) * r for s, r in zip(g_sft, g_rl)]
    d = [s - r for s, r in zip(g_sft, g_rl)]
    norm_sq, g_dot_d = sum_over_ranks([_dot(g, g), _dot(g, d)])
    scale, dscale = clip_scale(norm_sq, g_dot_d, max_norm)
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    total = 0.0
    for p, gv, gs, gr in zip(params, g_val, g_sft, g_rl):
        state, group = optimizer.state.get(p, {}), groups[id(p)]
        exp_avg, exp_avg_sq = (local([state[k]])[0] if k in state else None for k in ("exp_avg", "exp_avg_sq"))
        step = int(float(state["step"])) + 1 if "step" in state else 1
        direction = adam_step_derivative(gs, gr, mu, scale, dscale, exp_avg, exp_avg_sq, step, group)
        total += group["lr"] * float(torch.sum(gv.double() * direction))
    return sum_over_ranks([total])[0]


def meta_signal(
    form: MetaForm, g_val: list[torch.Tensor], g_sft: list[torch.Tensor], g_rl: list[torch.Tensor], mu: float,
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], max_norm: float | None, lr: float,
    local: Callable[[list[torch.Tensor]], list[torch.Tensor]], sum_over_ranks: Reduce,
) -> float:
    """This step's m_t in the spec's form (g_* are already this rank's shards)."""
    if form == "adam":
        return adam_form(g_val, g_sft, g_rl, mu, optimizer, params, max_norm, local, sum_over_ranks)
    return first_order(g_val, g_sft, g_rl, form, lr, sum_over_ranks)


class MetaWindow:
    """The K per-step samples of m_t between two mu updates, and the test that gates a move.

    Each main step between updates contributes one sample (its own g_SFT, g_RL and update,
    dotted with the validation gradient stored at the window's start). At the window's end
    mu moves by eta_meta towards the sign of the mean, and only when |mean| >= min_z * SE;
    snr = mean / SE is reported either way. The SE is over the steps' g_SFT and g_RL (the
    measured bulk of the noise, bench/results/meta_noise.md) with the window's g_val fixed.
    """

    def __init__(self, min_z: float):
        self.min_z = min_z
        self.samples: list[float] = []

    def add(self, sample: float) -> None:
        self.samples.append(sample)

    def close(self) -> tuple[int, dict[str, float]]:
        """(direction of the move: -1, 0 or +1; the window's metrics), and start a new window."""
        samples, self.samples = self.samples, []
        if not samples:
            return 0, {}
        mean = sum(samples) / len(samples)
        if len(samples) < 2:  # no spread to test against: move only if no test is asked for
            return (_sign(mean) if self.min_z == 0 else 0), {"meta_mean": mean, "meta_samples": 1.0}
        variance = sum((x - mean) ** 2 for x in samples) / (len(samples) - 1)
        se = math.sqrt(variance / len(samples))
        snr = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(1e6, mean))
        direction = _sign(mean) if abs(snr) >= self.min_z else 0
        return direction, {"meta_mean": mean, "meta_snr": snr, "meta_samples": float(len(samples))}


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)
