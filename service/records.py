"""Dataset records: the one shape every data source is turned into, and its validation.

A record is a JSON object

    {"prompt": "..." or [{"role": "system" | "user" | "assistant", "content": "..."}, ...],
     "completion": "expert solution, used by the SFT loss",            (optional)
     "answer": "ground truth, used by the verifier" or a number}        (optional)

with at least one of `completion` and `answer`. Unknown keys are rejected so a typo such
as "anwser" is reported instead of silently training without answers. Numeric answers are
normalised to strings ("14", "2.5"; 14.0 becomes "14").

Pure Python on purpose: the API validates uploads with it and must not import torch.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, Iterator

ALLOWED_KEYS = ("prompt", "completion", "answer")
CHAT_ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A record or a JSONL file is invalid. `problems` holds one line per problem."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


def parse_record(obj: object, line_no: int) -> dict:
    """Validate one decoded record and return it normalised (answer as a string).

    Raises RecordError("line N: ...") naming the first problem found.
    """

    def fail(message: str) -> RecordError:
        return RecordError(f"line {line_no}: {message}")

    if not isinstance(obj, dict):
        raise fail(f"a record must be a JSON object, got {_json_type(obj)}")
    unknown = sorted(str(key) for key in obj if key not in ALLOWED_KEYS)
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise fail(f"unknown key(s) {names}; allowed keys are prompt, completion, answer")
    if "prompt" not in obj:
        raise fail("'prompt' is required")
    record: dict = {"prompt": _check_prompt(obj["prompt"], fail)}
    if obj.get("completion") is not None:
        completion = obj["completion"]
        if not isinstance(completion, str) or not completion.strip():
            raise fail("'completion' must be a non-empty string")
        record["completion"] = completion
    if obj.get("answer") is not None:
        record["answer"] = _normalise_answer(obj["answer"], fail)
    if "completion" not in record and "answer" not in record:
        raise fail("a record needs a 'completion' (expert solution), an 'answer', or both")
    return record


def parse_jsonl(lines: Iterable[bytes | str | None], max_errors: int = 20) -> list[dict]:
    """Parse and validate a JSONL dataset, one record per line; blank lines are skipped.

    All lines are checked so the user can fix every problem at once: the RecordError lists
    up to `max_errors` problems, each starting with its 1-based line number.
    """
    return list(iter_jsonl(lines, max_errors))


def validate_jsonl(lines: Iterable[bytes | str | None], max_errors: int = 20) -> int:
    """Check a JSONL dataset like `parse_jsonl` and return its number of records, holding
    one line at a time (issue 13, item 9: the API validates uploads with this)."""
    return sum(1 for _record in iter_jsonl(lines, max_errors))


def iter_jsonl(lines: Iterable[bytes | str | None], max_errors: int = 20) -> Iterator[dict]:
    """Yield each valid record as it is read; at the end raise RecordError listing the bad
    lines (a `None` line stands for one too long to read), or saying there were none."""
    problems: list[str] = []
    invalid_lines = records = 0
    for line_no, raw in enumerate(lines, start=1):
        try:
            if raw is None:
                raise RecordError(f"line {line_no}: longer than this deployment accepts for one record")
            text = _decode(raw, line_no)
            if line_no == 1:
                text = text.removeprefix("\ufeff")  # editors on Windows add a byte-order mark
            if not text.strip():
                continue
            record = parse_record(_load_json(text, line_no), line_no)
        except RecordError as error:
            invalid_lines += 1
            if len(problems) < max_errors:
                problems.append(str(error))
            continue
        records += 1
        if not problems:  # once a line is bad the caller gets an error, not records
            yield record
    if problems:
        header = f"{invalid_lines} invalid line(s)"
        if invalid_lines > len(problems):
            header += f", the first {len(problems)}"
        raise RecordError("\n".join([header + ":", *problems]), problems)
    if not records:
        raise RecordError("the file contains no records")


def _check_prompt(prompt: object, fail) -> str | list[dict]:
    message = "'prompt' must be a string or a list of chat messages"
    if isinstance(prompt, str):
        if not prompt.strip():
            raise fail("'prompt' must not be empty")
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise fail(message)
    for index, message_obj in enumerate(prompt):
        where = f"'prompt'[{index}]"
        if not isinstance(message_obj, dict) or set(message_obj) != {"role", "content"}:
            raise fail(f"{where} must be an object with exactly 'role' and 'content'")
        if message_obj["role"] not in CHAT_ROLES:
            raise fail(f"{where}.role must be one of system, user, assistant")
        if not isinstance(message_obj["content"], str):
            raise fail(f"{where}.content must be a string")
    return [dict(message_obj) for message_obj in prompt]


def _normalise_answer(answer: object, fail) -> str:
    # bool is an int subclass in Python, but `true` is never a meaningful answer.
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise fail("'answer' must be a string or a number")
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise fail("'answer' must be a finite number")
        return str(int(answer)) if answer.is_integer() else repr(answer)
    text = str(answer).strip()
    if not text:
        raise fail("'answer' must not be empty")
    return text


def _decode(raw: bytes | str, line_no: int) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"line {line_no}: not valid UTF-8 text") from None


def _load_json(text: str, line_no: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f"line {line_no}: invalid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:  # issue 13, item 9: a 500 that left the upload on disk
        raise RecordError(f"line {line_no}: JSON nested too deeply") from None
    except ValueError:  # e.g. an integer of thousands of digits (Python's int limit)
        raise RecordError(f"line {line_no}: a value cannot be read (a number of thousands of digits?)") from None


def _json_type(obj: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if obj is None else names.get(type(obj), type(obj).__name__)
