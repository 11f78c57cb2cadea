"""Grader cost: per kind, completions scored per second on a 64-completion batch and the
seconds that adds to a training step; and the python sandbox's cost against a tiny-model
GRPO step of 64 completions (target: at most 20%).

    .venv/bin/python -m bench.graders [--repeats 5] [--steps 3]

Writes bench/results/graders.json and graders.md. math_verify is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BATCH = 64
PYTHON_GRADER = (
    "import re\n\n"
    "def reward(completions, **kwargs):\n"
    "    return [1.0 if re.search(r'####\\s*' + re.escape(str(a)), c) else 0.0 for c, a in zip(completions, kwargs['answer'])]\n"
)


def batch() -> tuple[list[str], list[dict]]:
    """64 completions of the kind the tiny model writes, half right, with JSON-task fields."""
    completions, records = [], []
    for index in range(BATCH):
        answer = str(index * 7 % 50)
        right = index % 2 == 0
        completions.append(f"{index} + 3 = {index + 3}. #### {answer if right else int(answer) + 1}"
                           if index % 3 else '{"name":"Mia","age":34,"city":"Oslo"}')
        records.append({"prompt": f"q{index}", "answer": answer, "name": "Mia", "age": 34, "city": "Oslo", "label": "spam"})
    return completions, records


def grader_specs(file_ref: str) -> dict[str, list[dict]]:
    from workers.trainer.json_extract import SCHEMA

    return {
        "math_verify": [{"kind": "math_verify"}],
        "string_check": [{"kind": "string_check", "field": "city", "json_key": "city"}],
        "regex": [{"kind": "regex", "pattern": r"####\s*(?P<answer>-?\d+)", "mode": "search"}],
        "json_schema": [{"kind": "json_schema", "schema": SCHEMA}],
        "python": [{"kind": "python", "file": file_ref}],
    }


def time_scoring(specs: list[dict], repeats: int) -> list[float]:
    from service.grader_specs import parse_graders
    from workers.trainer.graders import Scorer

    completions, records = batch()
    scorer = Scorer(parse_graders(specs), on_failure=lambda name, message: print("FAILED", name, message))
    scorer.score(completions, records)  # warm caches (math-verify parses, schema validators)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        scorer.score(completions, records)
        seconds.append(time.perf_counter() - started)
    return seconds


def grpo_step_seconds(steps: int) -> float:
    """Median wall time of a tiny-model GRPO step with 16 prompts x 4 completions."""
    from service.specs import JobSpec
    from workers.trainer.loop import setup, train_step

    spec = JobSpec.model_validate({
        "method": "grpo", "model": "builtin:tiny",
        "training": {"total_steps": steps + 1, "warmup_steps": 0, "rl_prompts_per_step": 16, "num_generations": 4,
                     "max_completion_tokens": 24, "device": "cpu"},
    })
    run = setup(spec)
    train_step(run, 1)  # warm-up
    return statistics.median(train_step(run, step)["step_seconds"] for step in range(2, steps + 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["AMFT_ARTIFACTS_DIR"] = home
        from service.settings import get_settings
        from workers.trainer.sandbox import describe_launcher

        get_settings.cache_clear()
        file_id = uuid.uuid4().hex
        (Path(home) / "files").mkdir()
        (Path(home) / "files" / f"{file_id}.py").write_text(PYTHON_GRADER)
        rows = {}
        for kind, specs in grader_specs(f"file:{file_id}").items():
            seconds = statistics.median(time_scoring(specs, args.repeats))
            rows[kind] = {"seconds_per_batch": seconds, "completions_per_second": BATCH / seconds}
            print(kind, rows[kind], flush=True)
        step = grpo_step_seconds(args.steps)
        print("grpo step", step, flush=True)
        launcher = describe_launcher(get_settings().grader_sandbox)
    baseline = rows["math_verify"]["seconds_per_batch"]
    for row in rows.values():
        row["added_seconds_per_step_vs_math_verify"] = row["seconds_per_batch"] - baseline
        row["share_of_grpo_step"] = row["seconds_per_batch"] / step
    result = {
        "batch": BATCH, "repeats": args.repeats, "grpo_step_seconds_tiny_64": step, "sandbox": launcher,
        "python_overhead_share_of_grpo_step": rows["python"]["seconds_per_batch"] / step,
        "target_share": 0.20, "graders": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs seen, shared and loaded (2 cores for 8 developers)",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "graders.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "graders.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# Grader cost (bench/graders.py)",
        "",
        f"One batch of {result['batch']} completions, median of {result['repeats']} runs; "
        f"tiny-model GRPO step (16 prompts x 4, CPU): {result['grpo_step_seconds_tiny_64']:.2f} s. "
        f"Python sandbox: {result['sandbox']}. Machine: {result['machine']}.",
        "",
        "| kind | seconds per batch | completions / s | added s per step vs math_verify | share of a GRPO step |",
        "|---|---|---|---|---|",
    ]
    for kind, row in result["graders"].items():
        lines.append(f"| {kind} | {row['seconds_per_batch']:.4f} | {row['completions_per_second']:.0f} | "
                     f"{row['added_seconds_per_step_vs_math_verify']:+.4f} | {row['share_of_grpo_step']:.1%} |")
    verdict = "meets" if result["python_overhead_share_of_grpo_step"] <= result["target_share"] else "misses"
    lines += ["", f"The python sandbox adds {result['python_overhead_share_of_grpo_step']:.1%} to a tiny GRPO step: "
              f"it {verdict} the 20% target. (The step itself already includes the math_verify scoring.)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
