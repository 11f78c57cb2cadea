"""Greedy accuracy on held-out splits, scored by the training verifier."""

from __future__ import annotations

from service.specs import JobSpec, TrainingSpec
from workers.trainer.batching import encode_prompt
from workers.trainer.data import load_records, require_answers
from workers.trainer.hooks import Metrics
from workers.trainer.rewards import is_correct
from workers.trainer.rollout import RolloutEngine


def load_eval_sets(spec: JobSpec, settings) -> dict[str, list[dict]]:
    """The spec's eval splits by label, each cut to training.eval_limit items."""
    sets = {}
    for source in spec.datasets.eval:
        records = load_records(source, settings)[: spec.training.eval_limit]
        require_answers(records, f"datasets.eval ({source.label})")
        sets[source.label] = records
    return sets


def greedy_completions(engine: RolloutEngine, tokenizer, records: list[dict], training: TrainingSpec) -> list[str]:
    """One greedy completion per record, decoded."""
    prompts = [encode_prompt(tokenizer, r["prompt"], training.max_prompt_tokens) for r in records]
    ids = engine.generate(prompts, 1, training.max_completion_tokens, greedy=True)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def evaluate_splits(engine: RolloutEngine, tokenizer, eval_sets: dict[str, list[dict]], training: TrainingSpec) -> Metrics:
    """{"eval_accuracy_<label>": fraction of records answered correctly} for every split."""
    metrics: Metrics = {}
    for label, records in eval_sets.items():
        texts = greedy_completions(engine, tokenizer, records, training)
        correct = sum(is_correct(text, r["answer"]) for text, r in zip(texts, records))
        metrics[f"eval_accuracy_{label}"] = correct / max(len(records), 1)
    return metrics
