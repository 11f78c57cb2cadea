"""The verifier: turn a completion and a ground-truth answer into a reward in [0, 1].

Answer extraction rule (`extract_answer`), first match wins:

1. the content of the last `\\boxed{...}` in the text (braces balanced, so
   `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`);
2. else the number after the last `####` marker (the GSM8K convention, `#### 72`);
3. else the last number anywhere in the text.

Numbers may be negative and may have decimals; thousands separators are removed
("1,234" -> "1234"). No match gives None, which is never correct.

Equivalence (`is_correct`) is decided by math-verify (`\\frac{1}{2}` equals `0.5`,
`8.0` equals `8`), after a fast path: two plain numbers are compared exactly as decimals
without calling sympy, which is what almost every arithmetic or GSM8K answer is.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from math_verify import parse, verify

# A number: optional minus (not when glued to a word or digit, so "10-5" gives 5),
# digits with optional thousands separators, optional decimals.
NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(NUMBER)
_HASHES_RE = re.compile(r"####\s*\$?\s*(" + NUMBER + ")")
_BOXED = "\\boxed{"
# Seconds math-verify may spend on one parse or comparison (main thread only, see _timeout).
_MATH_VERIFY_TIMEOUT = 5


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, by the rule in the module docstring, or None."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return _strip_thousands(boxed.strip())
    marked = _HASHES_RE.findall(text)
    if marked:
        return _strip_thousands(marked[-1])
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return _strip_thousands(numbers[-1])
    return None


def is_correct(completion: str, answer: str) -> bool:
    """True when the completion's extracted answer is mathematically equal to `answer`.

    Safe in any thread: math-verify's signal-based timeouts are only used in the main thread.
    """
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    gold = str(answer).strip()
    quick = _quick_compare(predicted, gold)
    if quick is not None:
        return quick
    timeout = _timeout()
    gold_parsed = _parse_cached(gold, timeout)
    predicted_parsed = _parse_cached(predicted, timeout)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(list(gold_parsed), list(predicted_parsed), timeout_seconds=timeout))


def reward(completion: str, answer: str, format_weight: float = 0.0) -> float:
    """(correct + format_weight * marked) / (1 + format_weight), so always in [0, 1].

    `marked` means the completion states its answer explicitly with \\boxed{} or ####.
    """
    score = 1.0 if is_correct(completion, answer) else 0.0
    if format_weight > 0.0 and has_marked_answer(completion):
        score += format_weight
    return score / (1.0 + format_weight)


def has_marked_answer(completion: str) -> bool:
    """True when the answer is marked with \\boxed{...} or a `####` line."""
    return _last_boxed(completion) is not None or _HASHES_RE.search(completion) is not None


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} whose braces balance (a cut-off one is skipped)."""
    start = text.rfind(_BOXED)
    while start != -1:
        content = _balanced(text, start + len(_BOXED))
        if content is not None:
            return content
        start = text.rfind(_BOXED, 0, start)
    return None


def _balanced(text: str, begin: int) -> str | None:
    depth = 1
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
    return None


def _strip_thousands(text: str) -> str:
    # Only commas between digit groups: "1,234" -> "1234" but "(1, 2)" stays a tuple.
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)


def _as_decimal(text: str) -> Decimal | None:
    cleaned = text.replace("\\$", "").replace("$", "").strip().rstrip(".")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", cleaned):
        return None
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def _quick_compare(predicted: str, gold: str) -> bool | None:
    """Decide without sympy when possible: equal strings, or two plain numbers."""
    if predicted == gold or predicted.casefold() == gold.casefold():
        return True
    predicted_number = _as_decimal(predicted)
    gold_number = _as_decimal(_strip_thousands(gold))
    if predicted_number is not None and gold_number is not None:
        return predicted_number == gold_number
    return None


def _timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread (and
    # raises elsewhere). Rollout scoring may run in worker threads, where we disable it.
    return _MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _parse_cached(text: str, timeout: int | None) -> tuple:
    # Gold answers repeat for every sample of a group and every epoch: parse each once.
    # `$...$` makes math-verify read the text as LaTeX, which also covers plain numbers.
    return tuple(parse(f"${text}$", parsing_timeout=timeout))
