"""Greedy accuracy on held-out splits, scored by the job's graders (the training reward)."""

from __future__ import annotations

import json
from typing import Callable

from service.grader_specs import MathVerifyGrader
from service.specs import JobSpec, TrainingSpec
from workers.trainer.batching import encode_prompt
from workers.trainer.data import load_records, require_fields
from workers.trainer.graders import Scorer
from workers.trainer.hooks import Metrics
from workers.trainer.rollout import RolloutEngine

SAMPLE_ROWS_PER_SPLIT = 8  # the trackers' table stays small
SAMPLE_TEXT_CHARS = 1000


def load_eval_sets(spec: JobSpec, settings, fields: set[str] = frozenset({"answer"})) -> dict[str, list[dict]]:
    """The spec's eval splits by label, each cut to training.eval_limit items."""
    sets = {}
    for source in spec.datasets.eval:
        records = load_records(source, settings)[: spec.training.eval_limit]
        require_fields(records, set(fields), f"datasets.eval ({source.label})")
        sets[source.label] = records
    return sets


def greedy_completions(engine: RolloutEngine, tokenizer, records: list[dict], training: TrainingSpec) -> list[str]:
    """One greedy completion per record, decoded."""
    prompts = [encode_prompt(tokenizer, r["prompt"], training.max_prompt_tokens) for r in records]
    ids = engine.generate(prompts, 1, training.max_completion_tokens, greedy=True)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def evaluate_splits(
    engine: RolloutEngine, tokenizer, eval_sets: dict[str, list[dict]], training: TrainingSpec, scorer: Scorer | None = None,
    on_samples: Callable[[list[dict]], None] | None = None,
) -> Metrics:
    """{"eval_accuracy_<label>": fraction of records every grader gave full marks} per split,
    plus "eval_reward_<label>" (the mean combined reward). `on_samples`, if given, receives
    the first few completions of every split with their rewards (sample_rows)."""
    scorer = scorer or Scorer([MathVerifyGrader()])
    metrics: Metrics = {}
    samples: list[dict] = []
    for label, records in eval_sets.items():
        texts = greedy_completions(engine, tokenizer, records, training)
        scored = scorer.score(texts, records)
        metrics[f"eval_accuracy_{label}"] = sum(scored.correct) / max(len(records), 1)
        metrics[f"eval_reward_{label}"] = sum(scored.rewards) / max(len(records), 1)
        samples += sample_rows(label, records, texts, scored.rewards, scored.correct)
    if on_samples is not None and samples:
        on_samples(samples)
    return metrics


def sample_rows(label: str, records: list[dict], texts: list[str], rewards, correct) -> list[dict]:
    """The first SAMPLE_ROWS_PER_SPLIT completions of a split: {split, prompt, completion,
    reward, correct}, texts cut to SAMPLE_TEXT_CHARS (chat prompts as `role: content` lines)."""
    rows = []
    for record, text, reward, right in list(zip(records, texts, rewards, correct))[:SAMPLE_ROWS_PER_SPLIT]:
        prompt = record["prompt"]
        if not isinstance(prompt, str):
            prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict) else json.dumps(m)
                                for m in prompt)
        rows.append({"split": label, "prompt": prompt[:SAMPLE_TEXT_CHARS], "completion": text[:SAMPLE_TEXT_CHARS],
                     "reward": float(reward), "correct": bool(right)})
    return rows
