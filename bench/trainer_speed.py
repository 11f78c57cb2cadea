"""Trainer speed and memory, side by side with TRL's GRPOTrainer, in one run.

    .venv/bin/pip install -r bench/requirements.txt   # TRL, benchmark-only
    .venv/bin/python -m bench.trainer_speed            # ~10-20 min on 2 cores

Settings (issue 2): SmolLM2-135M-Instruct, fp32, 2 torch threads; GRPO with 4 prompts x 4
generations, 64 new tokens, temperature 1, lr 1e-6, no KL, dapo (token-mean) loss; the AMFT
step adds an SFT batch of 4 GSM8K solutions (~190 tokens each with the chat template).
Each measured part runs in its own process (so peak RSS is per part); TRL and ours
alternate so machine noise hits both. Figures are medians over steps 2..N.
Writes bench/results/trainer_speed.json and trainer_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
THREADS = 2
RL_PROMPTS, GENERATIONS, NEW_TOKENS, LR = 4, 4, 64, 1e-6


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_peak_gflops() -> float:
    """Best fp32 GFLOP/s of a 2048^2 matmul on THREADS threads."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(8):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best / 1e9


def spec_for(method: str, steps: int):
    from service.specs import JobSpec

    return JobSpec.model_validate({
        "method": method,
        "model": "builtin:smollm2-135m",
        "datasets": {
            "sft": {"source": "gsm8k", "split": "train"},
            "rl": {"source": "builtin:arithmetic", "split": "train"},
            "validation": {"source": "builtin:arithmetic", "split": "validation"},
        },
        "training": {
            "total_steps": steps, "warmup_steps": 0, "learning_rate": LR, "sft_batch_size": 4,
            "rl_prompts_per_step": RL_PROMPTS, "num_generations": GENERATIONS,
            "max_completion_tokens": NEW_TOKENS, "max_prompt_tokens": 256, "micro_batch_size": 4,
        },
        # Meta steps at 3 and 6, so steps 2, 4, 5 time the ordinary AMFT step.
        "controller": {"meta_interval": 3, "meta_utility": "reward", "meta_val_prompts": 4},
    })


def run_ours(method: str, steps: int) -> dict:
    """Time `steps` steps of our loop; returns per-step timings and the parameter count."""
    from workers.trainer.loop import setup, train_step

    run = setup(spec_for(method, steps))
    params = sum(p.numel() for p in run.model.parameters())
    points = [train_step(run, step) for step in range(1, steps + 1)]
    return {"params": params, "points": points, "peak_rss_gib": peak_rss_gib()}


def run_trl(steps: int) -> dict:
    """Time TRL's GRPOTrainer with the same model, data, sampling and loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from service.settings import get_settings
    from service.specs import DataSourceSpec
    from workers.trainer.data import load_records
    from workers.trainer.models import smollm2_folder
    from workers.trainer.rewards import reward

    folder = smollm2_folder(get_settings())
    records = load_records(DataSourceSpec(source="builtin:arithmetic", split="train", limit=256), get_settings())
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in records])

    def verifier(prompts, completions, answer, **_):
        return [reward(c[0]["content"], a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.started = [], 0.0

        def on_step_begin(self, *_args, **_kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    config = GRPOConfig(
        output_dir="/tmp/amft-trl-bench", per_device_train_batch_size=RL_PROMPTS * GENERATIONS,
        num_generations=GENERATIONS, gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS,
        temperature=1.0, top_p=1.0, bf16=False, fp16=False, use_cpu=True, loss_type="dapo", beta=0.0,
        num_iterations=1, learning_rate=LR, scale_rewards="group", epsilon=0.2,
        gradient_checkpointing=False, report_to="none", max_steps=steps, save_strategy="no",
        logging_steps=1, seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=verifier, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return {"step_seconds": timer.seconds, "peak_rss_gib": peak_rss_gib()}


def part_main(part: str, steps: int) -> None:
    import torch

    torch.set_num_threads(THREADS)
    if part == "peak":
        result = {"matmul_peak_gflops": matmul_peak_gflops()}
    elif part == "trl":
        result = run_trl(steps)
    else:
        result = run_ours(part, steps)
    print("RESULT " + json.dumps(result))


def run_part(part: str, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-m", "bench.trainer_speed", "--part", part, "--steps", str(steps)],
                         capture_output=True, text=True, env=env, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"part {part} failed:\n{out.stderr[-3000:]}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def executed_tokens(point: dict) -> float:
    """Tokens the GRPO step's forward and backward actually ran: each distinct prompt once.

    The step logs every row's prompt + completion tokens, but the trainer's shared-prompt pass
    (workers/trainer/batching.py) runs a prompt once for its GENERATIONS completions.
    """
    rows = RL_PROMPTS * GENERATIONS
    logged = point["tokens_per_second"] * point["step_seconds"]
    completion = point["completion_tokens_mean"] * rows
    return completion + (logged - completion) / GENERATIONS


def summarise(peak: dict, trl: dict, grpo: dict, amft: dict, steps: int) -> dict:
    later = lambda points: [p for p in points if p["step"] >= 2]  # noqa: E731 - step 1 warms caches
    grpo_points, amft_points = later(grpo["points"]), later(amft["points"])
    plain = [p for p in amft_points if "meta_grad" not in p]
    meta = [p for p in amft_points if "meta_grad" in p]
    params = grpo["params"]
    tokens = [executed_tokens(p) for p in grpo_points]
    train_gflops = median([6 * params * t / p["train_seconds"] / 1e9 for t, p in zip(tokens, grpo_points)])
    trl_step = median(trl["step_seconds"][1:])
    amft_step, meta_step = median([p["step_seconds"] for p in plain]), median([p["step_seconds"] for p in meta])
    return {
        "trl_grpo_step_s": trl_step,
        "grpo_step_s": median([p["step_seconds"] for p in grpo_points]),
        "grpo_gen_s": median([p["gen_seconds"] for p in grpo_points]),
        "grpo_train_s": median([p["train_seconds"] for p in grpo_points]),
        "amft_step_s": amft_step,
        "amft_meta_step_s": meta_step,
        "meta_overhead_per_20_steps": (meta_step - amft_step) / (20 * amft_step),
        "matmul_peak_gflops": peak["matmul_peak_gflops"],
        "train_gflops": train_gflops,
        "train_fraction_of_peak": train_gflops / peak["matmul_peak_gflops"],
        "peak_rss_gib": max(grpo["peak_rss_gib"], amft["peak_rss_gib"]),
        "trl_peak_rss_gib": trl["peak_rss_gib"],
        "params": params,
        "steps_per_run": steps,
        "flops_counted": "6 * params * real (non-pad) tokens the RL step ran: completions, plus each distinct prompt once",
    }


def write_report(summary: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trainer_speed.json").write_text(json.dumps(summary, indent=2) + "\n")
    s = summary
    rows = [
        ("TRL GRPOTrainer step (GC off)", f"{s['trl_grpo_step_s']:.1f} s", "1.00"),
        ("our GRPO step", f"{s['grpo_step_s']:.1f} s", f"{s['grpo_step_s'] / s['trl_grpo_step_s']:.2f} (target <= 0.75)"),
        ("  of which generation", f"{s['grpo_gen_s']:.1f} s", ""),
        ("  of which training", f"{s['grpo_train_s']:.1f} s", ""),
        ("our AMFT step (non-meta)", f"{s['amft_step_s']:.1f} s", f"{s['amft_step_s'] / s['trl_grpo_step_s']:.2f} (target <= 1.0)"),
        ("our AMFT meta step", f"{s['amft_meta_step_s']:.1f} s", f"overhead over K=20: {100 * s['meta_overhead_per_20_steps']:.1f}% (target <= 10%)"),
        ("training throughput", f"{s['train_gflops']:.0f} GFLOP/s", f"{100 * s['train_fraction_of_peak']:.0f}% of {s['matmul_peak_gflops']:.0f} GFLOP/s peak (target >= 60%)"),
        ("peak RSS (ours)", f"{s['peak_rss_gib']:.2f} GiB", f"target <= 6; TRL {s['trl_peak_rss_gib']:.2f} GiB"),
    ]
    lines = ["# Trainer speed (SmolLM2-135M, fp32, 2 threads, CPU)", "",
             "Produced by `python -m bench.trainer_speed`; medians over steps 2..N, parts run one after another in one run.", "",
             "| what | figure | ratio / note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"FLOPs counted: {s['flops_counted']}. Before the shared-prompt pass (session 3) every row's "
              "prompt ran, and the count included them: that is the basis of session 1's 62%, so the two fractions "
              "are not comparable."]
    (RESULTS / "trainer_speed.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--part", choices=["peak", "trl", "grpo", "amft"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        part_main(args.part, args.steps)
        return
    parts = {name: run_part(name, args.steps) for name in ("peak", "trl", "grpo", "amft")}
    summary = summarise(parts["peak"], parts["trl"], parts["grpo"], parts["amft"], args.steps)
    write_report(summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
