"""Score completions with a job's weighted graders (specs in service/grader_specs.py).

Each kind is one small function `score(spec, completions, columns) -> list[float]` in
`GRADERS`, looked up once when the `Scorer` is built. `columns` maps every record field
to a list aligned with `completions` (TRL's convention; `prompts` holds the prompts), so
graders read ground truth, labels or tests from any field a dataset carries.

A grader that fails (raises, wrong count, a non-finite score) scores 0 for that batch; the
`Scorer` reports it through `on_failure(name, message)` and raises `GraderFailed` once one
grader failed `max_consecutive_failures` batches in a row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import jsonschema
import regex

from service.grader_specs import (
    JsonSchemaGrader, MathVerifyGrader, ModelGrader, PythonGrader, RegexGrader, StringCheckGrader, render_template,
)
from workers.trainer.rewards import is_correct, reward

Columns = dict[str, list]
ScoreFn = Callable[[object, list[str], Columns], list[float]]
# A user regex runs in this process; the `regex` library's timeout stops catastrophic backtracking.
REGEX_TIMEOUT_SECONDS = 0.5
DEFAULT_FAILURE_LIMIT = 3


class GraderError(RuntimeError):
    """One grader call failed; the message says how (shown to the user in a job event)."""


class GraderPartial(GraderError):
    """Some items of a batch could not be scored: they score 0, the others keep `scores`;
    reported like a failure but not counted toward `max_consecutive_failures`."""

    def __init__(self, scores: list[float], message: str):
        super().__init__(message)
        self.scores = scores


class GraderFailed(RuntimeError):
    """A grader failed too many batches in a row: the job fails with this message."""


def score_math_verify(spec: MathVerifyGrader, completions: list[str], columns: Columns) -> list[float]:
    """Today's verifier (rewards.reward): 1 for an equivalent answer, plus the format bonus."""
    return [reward(text, str(gold), spec.format_weight) for text, gold in zip(completions, columns[spec.field])]


def score_string_check(spec: StringCheckGrader, completions: list[str], columns: Columns) -> list[float]:
    """1.0 when the (stripped) text equals / contains / starts with the field's value."""
    compare = {"equals": str.__eq__, "contains": str.__contains__, "starts_with": str.startswith}[spec.operation]
    scores = []
    for text, expected in zip(completions, columns[spec.field]):
        got = _json_value(text, spec.json_key) if spec.json_key else text.strip()
        if got is None:
            scores.append(0.0)
            continue
        got, want = got.strip(), _as_text(expected).strip()
        if not spec.case_sensitive:
            got, want = got.casefold(), want.casefold()
        scores.append(1.0 if compare(got, want) else 0.0)
    return scores


def score_regex(spec: RegexGrader, completions: list[str], columns: Columns) -> list[float]:
    """1.0 when the pattern matches and every named group equals the field of that name."""
    flags = 0 if spec.case_sensitive else regex.IGNORECASE
    pattern = regex.compile(spec.pattern, flags)
    scores = []
    for index, text in enumerate(completions):
        match = _regex_match(pattern, text.strip(), spec.mode)
        ok = match is not None and all(
            _same(value, columns[group][index], spec.case_sensitive) for group, value in match.groupdict().items()
        )
        scores.append(1.0 if ok else 0.0)
    return scores


def score_json_schema(spec: JsonSchemaGrader, completions: list[str], columns: Columns) -> list[float]:
    """1.0 when the completion is JSON (code fences allowed) that validates against the schema."""
    validator = jsonschema.validators.validator_for(spec.json_schema)(spec.json_schema)
    scores = []
    for text in completions:
        try:
            value = json.loads(_strip_fences(text))
        except (json.JSONDecodeError, RecursionError):
            scores.append(0.0)
            continue
        scores.append(1.0 if validator.is_valid(value) else 0.0)
    return scores


def score_python(spec: PythonGrader, completions: list[str], columns: Columns) -> list[float]:
    """The user's reward function, run in a sandbox process (workers/trainer/sandbox.py)."""
    from workers.trainer.sandbox import run_grader  # bound to the uploaded file at call time

    return run_grader(spec.file, completions, columns)


def score_model(spec: ModelGrader, completions: list[str], columns: Columns, judge=None) -> list[float]:
    """The judge's reply to the rendered prompt, parsed by `score_pattern`, / score_max, in [0, 1].

    A reply without a number scores 0; the first such reply is reported (GraderPartial)
    while the others keep their scores. Every reply unparseable fails the batch.
    """
    if judge is None:
        raise GraderError("a model grader needs a judge client; run the job through the service")
    prompts = [_judge_prompt(spec.prompt, text, columns, index) for index, text in enumerate(completions)]
    replies = judge.replies(spec, prompts)
    if len(replies) != len(completions):
        raise GraderError(f"the judge answered {len(replies)} of {len(completions)} prompts")
    pattern = regex.compile(spec.score_pattern)
    scores, problems = [], []
    for reply in replies:
        value = _judge_score(pattern, reply, spec.score_max)
        scores.append(0.0 if value is None else value)
        if value is None:
            problems.append(f"no score in the judge's reply {reply[:200]!r} (score_pattern {spec.score_pattern!r})")
    if problems and len(problems) == len(replies):
        raise GraderError(problems[0])
    if problems:
        raise GraderPartial(scores, f"{len(problems)} of {len(replies)} replies scored 0: {problems[0]}")
    return scores


def _judge_prompt(template: str, completion: str, columns: Columns, index: int) -> str:
    values = {key: _as_text(column[index]) for key, column in columns.items() if key != "prompts"}
    prompt = columns["prompts"][index]
    values["prompt"] = prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    values["completion"] = completion
    return render_template(template, values)


def _judge_score(pattern, reply: str, score_max: float) -> float | None:
    try:
        match = pattern.search(reply, timeout=REGEX_TIMEOUT_SECONDS)
    except TimeoutError:
        return None
    if match is None:
        return None
    try:
        number = float(match.group(1) if pattern.groups else match.group(0))
    except (ValueError, TypeError):
        return None
    return min(max(number / score_max, 0.0), 1.0) if math.isfinite(number) else None


GRADERS: dict[str, ScoreFn] = {
    "math_verify": score_math_verify,
    "string_check": score_string_check,
    "regex": score_regex,
    "json_schema": score_json_schema,
    "python": score_python,
    "model": score_model,
}


def passed_math_verify(spec: MathVerifyGrader, completions: list[str], columns: Columns) -> list[bool]:
    """Correctness without the format bonus, so `accuracy` keeps its meaning for old specs."""
    return [is_correct(text, str(gold)) for text, gold in zip(completions, columns[spec.field])]


@dataclass
class Scored:
    """A batch's combined rewards, 0/1 correctness (every grader at full marks) and per-grader means."""

    rewards: list[float]
    correct: list[float]
    per_grader: dict[str, float] = field(default_factory=dict)


class Scorer:
    """A job's graders, resolved once; `score` turns a batch into rewards and metrics."""

    def __init__(self, specs: list, on_failure: Callable[[str, str], None] | None = None, judge=None):
        # `judge` (workers/judges.py) is how model graders reach their judge model.
        self.graders = [(spec, partial(score_model, judge=judge) if spec.kind == "model" else GRADERS[spec.kind])
                        for spec in specs]
        self.total_weight = sum(spec.weight for spec in specs)
        self.on_failure = on_failure or (lambda _name, _message: None)
        self.failures = {spec.label: 0 for spec in specs}

    def fields_read(self) -> set[str]:
        """Every record field some grader reads."""
        return set().union(*(spec.fields_read() for spec, _ in self.graders))

    def score(self, completions: list[str], records: list[dict]) -> Scored:
        """Score completions[i] against records[i] with every grader."""
        columns = record_columns(records)
        combined = [0.0] * len(completions)
        correct = [1.0] * len(completions)
        per_grader = {}
        for spec, score_fn in self.graders:
            scores = self._call(spec, score_fn, completions, columns)
            per_grader[spec.label] = sum(scores) / max(len(scores), 1)
            passed = passed_math_verify(spec, completions, columns) if spec.kind == "math_verify" else [s >= 1.0 for s in scores]
            for index, (value, ok) in enumerate(zip(scores, passed)):
                combined[index] += spec.weight * value / self.total_weight
                correct[index] = correct[index] if ok else 0.0
        return Scored(combined, correct, per_grader)

    def _call(self, spec, score_fn: ScoreFn, completions: list[str], columns: Columns) -> list[float]:
        try:
            scores = check_scores(score_fn(spec, completions, columns), len(completions))
        except GraderPartial as partly:
            self.on_failure(spec.label, f"grader {spec.label} ({spec.kind}): {partly}")
            self.failures[spec.label] = 0
            return check_scores(partly.scores, len(completions))
        except Exception as error:  # noqa: BLE001 - any grader failure scores 0 for the batch
            return self._failed(spec, _describe(error), len(completions))
        self.failures[spec.label] = 0
        return scores

    def _failed(self, spec, message: str, count: int) -> list[float]:
        self.failures[spec.label] += 1
        streak = self.failures[spec.label]
        self.on_failure(spec.label, f"grader {spec.label} ({spec.kind}) failed, batch scored 0: {message}")
        limit = getattr(spec, "max_consecutive_failures", DEFAULT_FAILURE_LIMIT)
        if streak >= limit:
            raise GraderFailed(f"grader {spec.label} ({spec.kind}) failed {streak} batches in a row: {message}")
        return [0.0] * count


def check_scores(scores: object, expected: int) -> list[float]:
    """A list of `expected` finite numbers, as floats; GraderError otherwise."""
    if not isinstance(scores, (list, tuple)):
        raise GraderError(f"returned {type(scores).__name__}, expected a list of {expected} floats")
    if len(scores) != expected:
        raise GraderError(f"returned {len(scores)} scores for {expected} completions")
    values = []
    for index, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GraderError(f"score {index} is {value!r}, not a finite number")
        values.append(float(value))
    return values


def record_columns(records: list[dict]) -> Columns:
    """Every field of the records as a column (TRL style): `prompts` plus each other key."""
    keys = sorted({key for record in records for key in record} - {"prompt"})
    columns: Columns = {"prompts": [record["prompt"] for record in records]}
    for key in keys:
        columns[key] = [record.get(key) for record in records]
    return columns


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, GraderError) else f"{type(error).__name__}: {text}"


def _regex_match(pattern, text: str, mode: str):
    try:
        return (pattern.fullmatch if mode == "fullmatch" else pattern.search)(text, timeout=REGEX_TIMEOUT_SECONDS)
    except TimeoutError:
        raise GraderError(f"the pattern took over {REGEX_TIMEOUT_SECONDS}s on one completion") from None


def _same(got: str | None, expected: object, case_sensitive: bool) -> bool:
    if got is None or expected is None:
        return False
    got, want = got.strip(), _as_text(expected).strip()
    return got == want if case_sensitive else got.casefold() == want.casefold()


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else str(value)


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()


def _json_value(text: str, key: str) -> str | None:
    try:
        value = json.loads(_strip_fences(text))
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, dict) or key not in value:
        return None
    return _as_text(value[key])
