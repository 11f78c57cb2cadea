"""The verifier: answer extraction rule and math-verify equivalence, hand-computed cases."""

import threading

import pytest

from workers.trainer.rewards import extract_answer, has_marked_answer, is_correct, reward


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{14}.", "14"),
        ("\\boxed{3} first, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # last box, nested braces
        ("\\boxed{{a}+{b}} and more", "{a}+{b}"),
        ("fine \\boxed{7} then cut off \\boxed{\\frac{1}{2", "7"),  # unbalanced last box skipped
        ("\\boxed{12} #### 13", "12"),  # boxed wins over ####
        ("12 + 7 = 19. 19 - 5 = 14. #### 14", "14"),
        ("#### 5 wait, no\n#### 6 apples, 7 pears", "6"),  # number after the last ####
        ("#### $1,234", "1234"),
        ("She has 1,234,567 coins and 8 bags", "8"),
        ("The total is 1,234,567", "1234567"),
        ("it drops to -5 degrees", "-5"),
        ("10-5 = 5, so 10-3", "3"),  # a minus glued to a digit is an operator
        ("costs 8.0 dollars.", "8.0"),
        ("pi is 3.14159", "3.14159"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("#### 14", "14", True),
        ("#### 15", "14", False),
        ("it is 8.0", "8", True),  # decimals equal as numbers
        ("it is 8", "8.00", True),
        ("it is 8.5", "8", False),
        ("#### 1,234", "1234", True),
        ("#### 1234", "1,234", True),
        ("temperature -3", "-3", True),
        ("temperature -3", "3", False),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),  # math-verify path
        ("\\boxed{\\frac{1}{2}}", "1/3", False),
        ("\\boxed{x+1}", "1+x", True),
        ("\\boxed{Yes}", "yes", True),
        ("nothing to extract", "4", False),
    ],
)
def test_is_correct(completion, answer, expected):
    assert is_correct(completion, answer) is expected


def test_is_correct_works_in_worker_threads():
    # math-verify's default signal-based timeout raises outside the main thread.
    results = []
    worker = threading.Thread(target=lambda: results.append(is_correct("\\boxed{\\frac{2}{4}}", "0.5")))
    worker.start()
    worker.join()
    assert results == [True]


def test_numeric_answers_are_scored_on_the_plain_number_path():
    # How fast this runs is a benchmark's business (bench/graders.py); the test checks that
    # the many plain numeric answers a GRPO step scores come out right.
    results = [is_correct(f"so {index} + 1 = {index + 1}. #### {index + 1}", str(index + 1)) for index in range(5000)]
    assert all(results)
    assert not is_correct("so 2 + 1 = 3. #### 3", "4")


def test_reward_with_and_without_format_weight():
    assert reward("#### 14", "14") == 1.0
    assert reward("the answer is 14", "14") == 1.0
    assert reward("the answer is 13", "14") == 0.0
    # (correct + 0.5 * marked) / 1.5
    assert reward("#### 14", "14", format_weight=0.5) == pytest.approx(1.0)
    assert reward("the answer is 14", "14", format_weight=0.5) == pytest.approx(1 / 1.5)
    assert reward("#### 13", "14", format_weight=0.5) == pytest.approx(0.5 / 1.5)
    assert reward("the answer is 13", "14", format_weight=0.5) == 0.0


def test_has_marked_answer():
    assert has_marked_answer("\\boxed{3}") and has_marked_answer("#### 3")
    assert not has_marked_answer("3") and not has_marked_answer("\\boxed{3")
