"""Fraction of weights a training step changes, float32 vs bfloat16 (issue 16).

Pure bf16 parameters (the trainer before issue 16: `dtype: bfloat16` cast the weights and
AdamW's state to bf16) round most small updates away: at lr 1e-5 an update of ~1e-5 is below
half a bf16 ulp for any weight above ~1e-3 in magnitude. Autocast over fp32 master weights
(the trainer now) keeps them. Measured on builtin:tiny, pure SFT steps on identical batches,
the same seed for every variant; `legacy_bf16` rebuilds the old setup (bf16 parameters and
AdamW on them) from the same run.

    PYTHONPATH=$PWD .venv/bin/python -m bench.bf16_updates [--steps 5]

Writes bench/results/bf16_updates.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from service.specs import JobSpec
from workers.trainer.loop import setup, train_step

RESULTS = Path(__file__).parent / "results"
LEARNING_RATES = (1e-5, 1e-4)


def spec_for(dtype: str, learning_rate: float) -> JobSpec:
    return JobSpec.model_validate({
        "method": "sft", "model": "builtin:tiny",
        "training": {"total_steps": 100, "warmup_steps": 0, "learning_rate": learning_rate, "sft_batch_size": 8,
                     "max_completion_tokens": 48, "dtype": dtype, "device": "cpu", "seed": 0},
    })


def changed_fractions(dtype: str, learning_rate: float, steps: int, legacy: bool = False) -> list[float]:
    """Per step: the fraction of trainable weight elements whose value changed."""
    run = setup(spec_for(dtype, learning_rate))
    if legacy:  # the old path: parameters and AdamW's state in bf16, no master copy
        run.model.to(torch.bfloat16)
        run.optimizer = torch.optim.AdamW([p for p in run.model.parameters() if p.requires_grad], lr=learning_rate)
        run.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _done: 1.0)
    params = [p for p in run.model.parameters() if p.requires_grad]
    fractions = []
    for step in range(1, steps + 1):
        before = [p.detach().clone() for p in params]
        train_step(run, step)
        changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
        fractions.append(changed / sum(p.numel() for p in params))
    return fractions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    variants = {"float32": ("float32", False), "bf16_autocast_fp32_master": ("bfloat16", False),
                "legacy_bf16_params": ("bfloat16", True)}
    rows = []
    for lr in LEARNING_RATES:
        for name, (dtype, legacy) in variants.items():
            fractions = changed_fractions(dtype, lr, args.steps, legacy)
            rows.append({"variant": name, "learning_rate": lr, "per_step": fractions,
                         "mean": sum(fractions) / len(fractions)})
            print(f"lr {lr:g} {name}: {rows[-1]['mean']:.4f}", flush=True)
    result = {"model": "builtin:tiny", "method": "sft", "steps": args.steps, "sft_batch_size": 8,
              "torch": torch.__version__, "machine": platform.machine(), "rows": rows,
              "command": "PYTHONPATH=$PWD .venv/bin/python -m bench.bf16_updates"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bf16_updates.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Weights changed per step: float32 vs bfloat16 (issue 16)", "",
             f"builtin:tiny, pure SFT, batch 8, {args.steps} steps, seed 0, CPU (torch {torch.__version__}).",
             "Fraction of trainable weight elements whose value changed, mean over steps.", "",
             "| lr | float32 | bf16 autocast, fp32 master (now) | bf16 parameters (before) |", "|---|---|---|---|"]
    for lr in LEARNING_RATES:
        by_name = {r["variant"]: r["mean"] for r in rows if r["learning_rate"] == lr}
        lines.append(f"| {lr:g} | {by_name['float32']:.3f} | {by_name['bf16_autocast_fp32_master']:.3f} "
                     f"| {by_name['legacy_bf16_params']:.3f} |")
    lines += ["", "Reproduce: `" + result["command"] + "`", ""]
    (RESULTS / "bf16_updates.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
