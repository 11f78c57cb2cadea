"""Dataset records: the one shape every data source is turned into, and its validation.

A record is a JSON object

    {"prompt": "..." or [{"role": "system" | "user" | "assistant", "content": "..."}, ...],
     "completion": "expert solution, used by the SFT loss",            (optional)
     "answer": "ground truth, used by math_verify" or a number,        (optional)
     "<any other field>": any JSON value}                              (optional)

with at least one field beside the prompt. Extra fields (`label`, `ground_truth`, `tests`,
...) reach every grader as columns; whether a field a grader reads is present is checked
when a job loads its data (workers/trainer/data.require_fields), since only the job's
spec says which graders read what. Numeric answers are normalised to strings ("14",
"2.5"; 14.0 becomes "14").

Two chat forms are accepted as well and turned into this shape:
- OpenAI / TRL conversational: {"messages": [..., {"role": "assistant", ...}], ...}: the
  prompt is every message before the last assistant turn, the completion is that turn;
- TRL's conversational prompt/completion: {"prompt": [messages], "completion":
  [{"role": "assistant", "content": ...}]}.

Pure Python on purpose: the API validates uploads with it and must not import torch.
"""

from __future__ import annotations

import json
import math
import re
from typing import Iterable, Iterator

CORE_KEYS = ("prompt", "completion", "answer")
CHAT_ROLES = ("system", "user", "assistant")
# Keys a chat message may carry (OpenAI's fine-tuning format adds `name` and `weight`);
# only role and content are kept.
MESSAGE_KEYS = {"role", "content", "name", "weight"}
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # fullmatch
# Column names the grader call itself uses (TRL's convention): a record may not shadow them.
RESERVED_FIELDS = {"prompts", "completions", "messages"}


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
    if "messages" in obj:
        obj = _from_messages(obj, fail)
    bad = sorted(str(key) for key in obj if key not in CORE_KEYS and (not FIELD_NAME.fullmatch(str(key)) or key in RESERVED_FIELDS))
    if bad:
        names = ", ".join(repr(key) for key in bad)
        raise fail(f"field name(s) {names} not allowed: use letters, digits and _ (not prompts, completions, messages)")
    if "prompt" not in obj:
        raise fail("'prompt' (or 'messages') is required")
    record: dict = {"prompt": _check_prompt(obj["prompt"], fail)}
    if obj.get("completion") is not None:
        record["completion"] = _check_completion(obj["completion"], fail)
    if obj.get("answer") is not None:
        record["answer"] = _normalise_answer(obj["answer"], fail)
    record.update({key: value for key, value in obj.items() if key not in CORE_KEYS and value is not None})
    if len(record) == 1:
        raise fail("a record needs a 'completion' (expert solution), an 'answer' or another field for the graders")
    return record


def _from_messages(obj: dict, fail) -> dict:
    """{"messages": [...], extra...} as {"prompt": [...], "completion": "...", extra...}."""
    if "prompt" in obj or "completion" in obj:
        raise fail("use either 'messages' or 'prompt'/'completion', not both")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise fail("'messages' must be a non-empty list of chat messages")
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), default=None)
    if last is None:
        raise fail("'messages' needs an assistant turn (the expert completion)")
    if last != len(messages) - 1:
        raise fail("'messages' must end with the assistant turn (the expert completion)")
    if last == 0:
        raise fail("'messages' needs at least one message before the assistant turn (the prompt)")
    record = {key: value for key, value in obj.items() if key != "messages"}
    record["prompt"] = messages[:last]
    record["completion"] = _message_content(messages[last], f"'messages'[{last}]", fail)
    return record


def _check_completion(completion: object, fail) -> str:
    if isinstance(completion, list):  # TRL conversational: [{"role": "assistant", "content": ...}]
        if len(completion) != 1 or not isinstance(completion[0], dict) or completion[0].get("role") != "assistant":
            raise fail("'completion' as a list must be one assistant message")
        completion = _message_content(completion[0], "'completion'[0]", fail)
    if not isinstance(completion, str) or not completion.strip():
        raise fail("'completion' must be a non-empty string (or one assistant message)")
    return completion


def _message_content(message: object, where: str, fail) -> str:
    if not isinstance(message, dict) or not {"role", "content"} <= set(message) or set(message) - MESSAGE_KEYS:
        raise fail(f"{where} must be an object with 'role' and 'content' (and optionally 'name', 'weight')")
    if not isinstance(message["content"], str) or not message["content"].strip():
        raise fail(f"{where}.content must be a non-empty string")
    return message["content"]


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
        if not isinstance(message_obj, dict) or not {"role", "content"} <= set(message_obj) or set(message_obj) - MESSAGE_KEYS:
            raise fail(f"{where} must be an object with 'role' and 'content' (and optionally 'name', 'weight')")
        if message_obj["role"] not in CHAT_ROLES:
            raise fail(f"{where}.role must be one of system, user, assistant")
        if not isinstance(message_obj["content"], str):
            raise fail(f"{where}.content must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


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
