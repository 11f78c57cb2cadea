"""How noisy is AMFT's meta-gradient m_t? Repeated draws at one fixed checkpoint (issue 5).

    .venv/bin/python -m bench.meta_noise        # ~6 min on 2 cores

The stability runs (bench/results/algorithms_stability.md) found m_t indistinguishable from
zero-mean noise during training. This measures it without training in the way: the committed
tier-1 base (bench/base/) stays fixed, and the trainer's own meta step
(workers/trainer/loop.py: validation gradient, g_SFT, g_RL) is repeated with fresh batches,
for several validation and RL batch sizes. If m_t carries a signal, its mean should stand out
from its standard error as the batches grow. Validation prompts come from the validation
split only. Writes bench/results/meta_noise.{json,md}.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from bench import algorithms_config as cfg
from bench import algorithms_runner as runner
from bench.algorithms_report import FINDINGS_PLACEHOLDER, write_keeping_findings

RESULTS = Path(__file__).parent / "results"
DRAWS = 16
# (utility, validation prompts, RL prompts); 8 samples per prompt
SETTINGS = (("reward", 4, 4), ("reward", 16, 4), ("reward", 64, 4), ("reward", 64, 16), ("nll", 4, 4), ("nll", 64, 16))


def draws(utility: str, val_prompts: int, rl_prompts: int) -> list[dict]:
    """DRAWS meta steps at the base checkpoint (no optimizer step): m_t and its two cosines."""
    from workers.trainer.loop import rl_backward, sample_rollouts, setup, sft_backward, take_grads, validation_gradient
    from workers.trainer.meta_gradient import first_order as meta_gradient

    spec = cfg.job_spec(cfg.RunConfig("amft", "noise", 0, cfg.tier1_spec(
        "amft", 0, training={"rl_prompts_per_step": rl_prompts, "eval_every": None},
        controller={"eta_meta": cfg.TIER1_PICKS["eta_meta"], "meta_val_prompts": val_prompts, "meta_utility": utility})))
    run = setup(spec)
    params = [p for p in run.model.parameters() if p.requires_grad]
    out = []
    for _ in range(DRAWS):
        g_val = validation_gradient(run, params)
        sft_backward(run, run.streams["sft"].next_batch(spec.training.sft_batch_size), weight=1.0)
        g_sft = take_grads(params)
        rollouts = sample_rollouts(run, run.streams["rl"].next_batch(rl_prompts))
        rl_backward(run, rollouts, weight=1.0)
        g_rl = take_grads(params)
        out.append({
            "m": meta_gradient(g_val, g_sft, g_rl, "cosine", 0.0),
            "cos_val_sft": cosine(g_val, g_sft),
            "cos_val_rl": cosine(g_val, g_rl),
            "zero_signal": rollouts.zero_signal.float().mean().item(),
            "no_val_gradient": not any(bool(g.any()) for g in g_val),
        })
    return out


def cosine(a: list, b: list) -> float:
    dot = lambda x, y: float(sum((u.double() * v.double()).sum() for u, v in zip(x, y)))  # noqa: E731
    norms = math.sqrt(dot(a, a) * dot(b, b))
    return dot(a, b) / norms if norms else 0.0  # a batch with no signal has no gradient: m_t is 0 then too


def describe(values: list[float]) -> dict:
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    se = sd / math.sqrt(len(values))
    return {"mean": mean, "sd": sd, "se": se, "t": mean / se if se else math.inf}


def main() -> None:
    work = Path("/tmp/amft-meta-noise")
    runner.configure_env(work)
    import torch

    torch.set_num_threads(2)
    runner.install_committed_base(work)
    rows = []
    for utility, val_prompts, rl_prompts in SETTINGS:
        started = time.perf_counter()
        samples = draws(utility, val_prompts, rl_prompts)
        row = {"utility": utility, "val_prompts": val_prompts, "rl_prompts": rl_prompts, "draws": samples,
               "seconds": time.perf_counter() - started}
        row |= {key: describe([s[key] for s in samples]) for key in ("m", "cos_val_sft", "cos_val_rl")}
        rows.append(row)
        print(f"{utility} val {val_prompts} rl {rl_prompts}: m {row['m']['mean']:+.4f} ± {row['m']['se']:.4f} "
              f"(sd {row['m']['sd']:.3f}) in {row['seconds']:.0f} s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "meta_noise.json").write_text(json.dumps({"draws": DRAWS, "rows": rows}, indent=1))
    write_markdown(rows)


def write_markdown(rows: list[dict]) -> None:
    """bench/results/meta_noise.md from the rows main() measured (its findings block is kept)."""
    lines = ["# AMFT meta-gradient noise at a fixed checkpoint", "", FINDINGS_PLACEHOLDER, "",
             f"Produced by `python -m bench.meta_noise`: the committed tier-1 base, {DRAWS} meta steps per row with "
             "fresh batches and no optimizer step (8 samples per prompt, SFT batch 8, cosine form). reward: g_val is a "
             "policy gradient of validation reward; nll: the gradient of expert NLL on validation solutions. "
             "mean ± standard error (sd) over the draws; t = mean / SE.", "",
             "| utility | validation prompts | RL prompts | m_t | t | cos(g_val, g_SFT) | cos(g_val, g_RL) | zero-signal RL groups "
             "| draws with g_val = 0 | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cell = lambda d: f"{d['mean']:+.4f} ± {d['se']:.4f} ({d['sd']:.3f})"  # noqa: E731
        zero = statistics.fmean(s["zero_signal"] for s in row["draws"])
        lines.append(f"| {row['utility']} | {row['val_prompts']} | {row['rl_prompts']} | {cell(row['m'])} | {row['m']['t']:+.1f} | "
                     f"{cell(row['cos_val_sft'])} | {cell(row['cos_val_rl'])} | {100 * zero:.0f}% | "
                     f"{sum(s['no_val_gradient'] for s in row['draws'])}/{DRAWS} | {row['seconds']:.0f} |")
    write_keeping_findings(RESULTS / "meta_noise.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
