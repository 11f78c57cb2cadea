"""What the inference tasks do, outside Celery: serve one generation payload, run one
evaluation. Engines come from the process-wide cache, so they stay warm across tasks, and
concurrent tasks (a threads pool) meet in each engine's micro-batcher.
"""

from __future__ import annotations

import logging
import threading
import time

from typing import Callable

from service.settings import Settings, get_settings
from workers.inference.batcher import BATCH, Abandoned
from workers.inference.loader import engine_cache, model_key
from workers.inference.types import InferenceError, Sampling

log = logging.getLogger(__name__)
_THREADS_SET = threading.Lock()
_threads_done = False


def generate_reply(payload: dict, settings: Settings | None = None, cancelled: Callable[[], bool] | None = None,
                   send: Callable[[dict], None] | None = None) -> dict | None:
    """The reply for a /generate payload: {"results": [...], "backend"} or {"error": {...}}.

    With `"stream": true` in the payload, `send({"deltas": [[choice index, text], ...]})`
    is called from the decode loop as tokens are decoded, before the reply.

    None when nobody will read it: the payload's deadline passed or `cancelled()` turned
    true (the API's client went away), before or during generation.
    """
    settings = settings or get_settings()
    deadline = payload.get("deadline")
    if deadline and time.time() > deadline:
        return None
    try:
        key = model_key(payload.get("model") or {})
        if payload.get("op"):
            return tokenizer_reply(_cache(settings).get(key), payload)
        sampling = Sampling.from_dict(payload["sampling"])
        prompts = payload["prompts"]
        on_text = (lambda deltas: send({"deltas": deltas})) if payload.get("stream") and send else None
        cache = _cache(settings)
        results = cache.generate(key, prompts, sampling, raw=bool(payload.get("raw")), tenant=str(payload.get("tenant", "")),
                                 deadline=deadline, cancelled=cancelled, fit_context=bool(payload.get("fit_context")),
                                 on_text=on_text)
        return {"results": [r.to_dict() for r in results], "backend": cache.factory.backend}
    except Abandoned:
        log.info("generation abandoned by its caller")
        return None
    except InferenceError as error:
        return error.to_dict()
    except (KeyError, TypeError, ValueError) as error:
        return InferenceError("invalid", f"malformed generation request: {error}").to_dict()
    except Exception as error:  # noqa: BLE001 - the API must get an answer, not a timeout
        log.exception("generation failed")
        return InferenceError("internal", f"generation failed: {type(error).__name__}: {error}").to_dict()


TOKENIZER_OPS = ("tokenizer_info", "tokenize", "detokenize")


def tokenizer_reply(engine, payload: dict) -> dict:
    """The checkpoint's own tokenizer, served (vLLM's /tokenizer_info, /tokenize and
    /detokenize shapes, which lm-evaluation-harness's remote tokenizer reads)."""
    op, tokenizer = payload["op"], engine.tokenizer
    if op == "tokenizer_info":
        return {"eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token,
                "chat_template": getattr(tokenizer, "chat_template", None), "vocab_size": len(tokenizer),
                "model_max_length": engine.max_context}
    if op == "tokenize":
        ids = tokenizer(payload["prompt"], add_special_tokens=bool(payload.get("add_special_tokens")))["input_ids"]
        return {"tokens": ids, "count": len(ids)}
    if op == "detokenize":
        tokens = payload["tokens"]
        if any(not isinstance(t, int) or not 0 <= t < len(tokenizer) for t in tokens):
            raise InferenceError("invalid", f"tokens: ids must lie in this model's vocabulary of {len(tokenizer)}")
        return {"prompt": tokenizer.decode(tokens)}
    raise InferenceError("invalid", f"op must be one of {', '.join(TOKENIZER_OPS)}")


def _cache(settings: Settings):
    """The warm engine cache; sets torch's thread count once per process."""
    global _threads_done
    with _THREADS_SET:
        if not _threads_done and settings.inference_torch_threads:
            import torch

            torch.set_num_threads(settings.inference_torch_threads)
        _threads_done = True
    return engine_cache(settings)


EVAL_CHUNK = 8  # prompts per generate call: small, so progress shows and interactive work slips in between


def run_evaluation(evaluation_id: str, settings: Settings | None = None) -> str:
    """Generate for every dataset item, score with the job's graders, store results."""
    from service import evaluations
    from service.db import get_database

    settings = settings or get_settings()
    db = get_database(settings.resolved_database_url)
    work = evaluations.start_evaluation(db, evaluation_id)
    if work is None:
        return f"evaluation {evaluation_id}: already finished"
    try:
        items = _score(work, settings, lambda done, total: evaluations.record_progress(db, evaluation_id, list(done), total))
    except InferenceError as error:
        evaluations.fail_evaluation(db, evaluation_id, error.message)
        return f"evaluation {evaluation_id}: failed ({error.message})"
    except Exception as error:  # noqa: BLE001 - recorded on the row for the user
        log.exception("evaluation %s failed", evaluation_id)
        evaluations.fail_evaluation(db, evaluation_id, f"{type(error).__name__}: {error}")
        return f"evaluation {evaluation_id}: failed"
    evaluations.finish_evaluation(db, evaluation_id, items)
    return f"evaluation {evaluation_id}: {sum(i['correct'] for i in items)}/{len(items)} correct"


def _score(work: dict, settings: Settings, progress: Callable[[list, int], None]) -> list[dict]:
    from service.grader_specs import parse_graders
    from service.specs import DataSourceSpec
    from workers.trainer.data import DatasetError, load_records, require_fields
    from workers.trainer.graders import Scorer
    from workers.trainer.rewards import extract_answer

    failures: list[str] = []
    from workers.judges import Judge

    judge = Judge(settings, tenant_id=str(work.get("tenant_id", "")))  # a model grader's judge: this tenant's models
    scorer = Scorer(parse_graders(work.get("reward")), on_failure=lambda _name, message: failures.append(message), judge=judge)
    try:
        records = require_fields(load_records(DataSourceSpec(**work["dataset"]), settings), scorer.fields_read(), "evaluation")
    except DatasetError as error:
        raise InferenceError("invalid", str(error)) from None
    key = model_key(work["model"])
    sampling = Sampling.from_dict(work["sampling"])
    cache = _cache(settings)
    items = []
    for start in range(0, len(records), EVAL_CHUNK):
        chunk = records[start : start + EVAL_CHUNK]
        results = cache.generate(key, [r["prompt"] for r in chunk], sampling, priority=BATCH,
                                 tenant=str(work.get("tenant_id", "")))
        texts = [result.completions[0].text for result in results]
        scored = scorer.score(texts, chunk)
        if failures:  # a grader that cannot score makes the accuracy meaningless: say why
            raise InferenceError("invalid", failures[0])
        for offset, (record, result) in enumerate(zip(chunk, results)):
            completion = result.completions[0]
            items.append({
                "index": start + offset, "prompt": record["prompt"], "answer": record.get("answer"),
                "output": completion.text, "extracted": extract_answer(completion.text),
                "correct": bool(scored.correct[offset]), "reward": scored.rewards[offset],
                "finish_reason": completion.finish_reason, "tokens": completion.tokens,
            })
        progress(items, len(records))
    return items
