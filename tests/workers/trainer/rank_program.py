"""One rank of the equivalence tests (run by torchrun, or alone as the one-process reference).

usage: python rank_program.py SPEC_JSON OUT_DIR [--fixed-completions] [--train [RESUME_DIR]]

Runs the spec's steps through the real loop (`setup` + `train_step`), writes every step's
metrics to OUT_DIR/rank<r>.json and, from rank 0, the final full weights to
OUT_DIR/weights.safetensors. With --fixed-completions the rollout engine is replaced by one
that returns fixed completions (half right, half wrong per group), so a 2-rank run and a
one-process run see the same rollouts although their samplers differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from service.specs import JobSpec
from workers.trainer.batching import encode_prompt
from workers.trainer.data import load_records
from workers.trainer.hooks import TrainerHooks
from workers.trainer.loop import Run, run_steps, setup, train_step


class FixedEngine:
    """Completions that depend only on the prompt: sample j is right for even j."""

    def __init__(self, tokenizer, answers: dict[tuple[int, ...], str]):
        self.tokenizer, self.answers = tokenizer, answers

    def sync(self, model) -> None:
        return None

    def generate(self, prompts, num_samples, max_new_tokens, temperature=1.0, top_p=1.0, greedy=False):
        out = []
        for prompt in prompts:
            answer = self.answers[tuple(prompt)]
            for j in range(num_samples):
                text = f"so it is {answer}" if j % 2 == 0 else f"maybe {j * 7 + len(prompt)} or so"
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
                out.append(ids + [self.tokenizer.eos_token_id])
        return out


def run_program(spec: JobSpec, out: Path, fixed_completions: bool) -> None:
    """Run the spec's steps, writing per-rank metrics and rank 0's final weights to `out`."""
    run = setup(spec)
    if fixed_completions:
        fix_completions(run)
    points = []
    for step in range(1, spec.training.total_steps + 1):
        point = train_step(run, step)
        points.append({k: v for k, v in point.items() if not k.endswith("seconds") and k != "tokens_per_second"})
    (out / f"rank{run.world.rank}.json").write_text(json.dumps(points))
    model_state = run.world.full_model_state(run.model)
    full = model_state if model_state is not None else run.model.state_dict()
    run.world.write_once(lambda: save_file({k: v.detach().clone().contiguous() for k, v in full.items()}, str(out / "weights.safetensors")))
    run.world.close()


def fix_completions(run: Run) -> None:
    """Replace the run's rollout engine with a FixedEngine for its RL and validation prompts."""
    from service.settings import get_settings

    spec, t = run.spec, run.spec.training
    records = load_records(spec.datasets.rl, get_settings()) + load_records(spec.datasets.validation, get_settings())
    answers = {tuple(encode_prompt(run.tokenizer, r["prompt"], t.max_prompt_tokens)): r["answer"] for r in records}
    run.engine = FixedEngine(run.tokenizer, answers)


def train_program(spec: JobSpec, out: Path, resume: Path | None, fixed_completions: bool = False) -> list[dict]:
    """The whole run as `train` runs it (checkpoints under out, resumable); rank 0's metrics
    to out/points.json."""
    points: list[dict] = []
    run = setup(spec)
    if fixed_completions:
        fix_completions(run)
    try:
        run_steps(run, out, run.world.reporter(TrainerHooks(on_metrics=points.append)), resume)
    finally:
        run.world.close()
    if points:  # rank 0 only: the others' hooks are no-ops
        (out / "points.json").write_text(json.dumps(points))
    return points


if __name__ == "__main__":
    spec_arg, out_arg = JobSpec.model_validate(json.loads(Path(sys.argv[1]).read_text())), Path(sys.argv[2])
    if "--train" in sys.argv:
        rest = [arg for arg in sys.argv[sys.argv.index("--train") + 1:] if not arg.startswith("--")]
        train_program(spec_arg, out_arg, Path(rest[0]) if rest else None, "--fixed-completions" in sys.argv)
    else:
        run_program(spec_arg, out_arg, "--fixed-completions" in sys.argv)
