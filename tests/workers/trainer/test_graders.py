"""Each grader kind on hand-made completions, with the expected scores written out."""

import math

import pytest
from pydantic import ValidationError

from service.grader_specs import parse_graders
from service.specs import JobSpec
from workers.trainer.graders import GraderFailed, Scorer, check_scores, record_columns


def scores(grader: dict, completions: list[str], records: list[dict]) -> list[float]:
    return Scorer(parse_graders([grader])).score(completions, records).rewards


def test_default_reward_is_math_verify_and_old_specs_mean_the_same():
    assert [g.kind for g in JobSpec().reward] == ["math_verify"]
    old = JobSpec.model_validate({"reward": {"kind": "math_verify", "format_weight": 0.5}})
    assert old.reward[0].format_weight == 0.5
    records = [{"prompt": "q", "answer": "14"}] * 3
    # correct + marked = (1 + 0.5) / 1.5; correct unmarked = 1 / 1.5; wrong = 0
    scored = Scorer(old.reward).score(["#### 14", "it is 14", "#### 15"], records)
    assert scored.rewards == pytest.approx([1.0, 1 / 1.5, 0.5 / 1.5])
    assert scored.correct == [1.0, 1.0, 0.0]  # accuracy keeps its meaning: the answer, not the mark


@pytest.mark.parametrize(
    "operation, case_sensitive, expected",
    [
        ("equals", True, [1.0, 0.0, 0.0, 0.0]),
        ("equals", False, [1.0, 1.0, 0.0, 0.0]),
        ("contains", True, [1.0, 0.0, 1.0, 0.0]),
        ("starts_with", False, [1.0, 1.0, 0.0, 1.0]),
    ],
)
def test_string_check(operation, case_sensitive, expected):
    grader = {"kind": "string_check", "field": "label", "operation": operation, "case_sensitive": case_sensitive}
    completions = ["  spam ", "SPAM", "it is spam", "Spammy"]
    assert scores(grader, completions, [{"prompt": "p", "label": "spam"}] * 4) == expected


def test_string_check_reads_a_json_key():
    grader = {"kind": "string_check", "field": "city", "json_key": "city", "case_sensitive": False}
    completions = ['{"city": "oslo"}', '```json\n{"city": "Oslo"}\n```', '{"town": "Oslo"}', "Oslo", '["Oslo"]']
    assert scores(grader, completions, [{"prompt": "p", "city": "Oslo"}] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_regex_fullmatch_search_and_named_groups():
    records = [{"prompt": "p", "label": "cat", "n": 3}] * 4
    completions = ["label: cat", "I think label: cat", "label: dog", "LABEL: CAT"]
    full = {"kind": "regex", "pattern": r"label: (?P<label>\w+)", "mode": "fullmatch"}
    assert scores(full, completions, records) == [1.0, 0.0, 0.0, 0.0]
    search = {"kind": "regex", "pattern": r"label: (?P<label>\w+)", "mode": "search", "case_sensitive": False}
    assert scores(search, completions, records) == [1.0, 1.0, 0.0, 1.0]
    number = {"kind": "regex", "pattern": r"(?P<n>\d+) items"}  # a numeric field compares as text
    assert scores(number, ["3 items", "4 items", "items"], records[:3]) == [1.0, 0.0, 0.0]


def test_regex_and_schema_errors_are_422_material():
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        JobSpec.model_validate({"reward": [{"kind": "regex", "pattern": "(unclosed"}]})
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        JobSpec.model_validate({"reward": [{"kind": "json_schema", "schema": {"type": 5}}]})
    with pytest.raises(ValidationError, match="grader names must be unique"):
        JobSpec.model_validate({"reward": [{"kind": "math_verify"}, {"kind": "math_verify"}]})


def test_json_schema():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completions = [
        '{"name": "Tom", "age": 7}',
        '```json\n{"name": "Tom", "age": 7}\n```',
        '{"name": "Tom", "age": "7"}',  # wrong type
        '{"name": "Tom"}',  # missing field
        "name: Tom",  # not JSON
        '{"name": "Tom", "age": 7, "x": 1}',  # extra field
    ]
    assert scores({"kind": "json_schema", "schema": schema}, completions, [{"prompt": "p"}] * 6) == [
        1.0, 1.0, 0.0, 0.0, 0.0, 0.0,
    ]


def test_weighted_combination_and_per_grader_metrics():
    graders = parse_graders([
        {"kind": "json_schema", "name": "valid", "weight": 1.0, "schema": {"type": "object"}},
        {"kind": "string_check", "name": "name_ok", "weight": 3.0, "field": "name", "json_key": "name"},
    ])
    records = [{"prompt": "p", "name": "Ana"}] * 3
    scored = Scorer(graders).score(['{"name": "Ana"}', '{"name": "Bo"}', "nope"], records)
    assert scored.rewards == pytest.approx([1.0, 0.25, 0.0])
    assert scored.correct == [1.0, 0.0, 0.0]
    assert scored.per_grader == pytest.approx({"valid": 2 / 3, "name_ok": 1 / 3})


def test_record_columns_are_trl_style():
    records = [{"prompt": "a", "answer": "1", "label": "x"}, {"prompt": "b", "tests": ["t"]}]
    assert record_columns(records) == {
        "prompts": ["a", "b"], "answer": ["1", None], "label": ["x", None], "tests": [None, ["t"]],
    }
    assert Scorer(parse_graders([{"kind": "regex", "pattern": "(?P<label>x)"}])).fields_read() == {"label"}
    assert Scorer(parse_graders(None)).fields_read() == {"answer"}


@pytest.mark.parametrize(
    "returned, message",
    [
        ("nope", "returned str, expected a list of 2 floats"),
        ([1.0], "returned 1 scores for 2 completions"),
        ([1.0, math.nan], "score 1 is nan, not a finite number"),
        ([True, 1.0], "score 0 is True, not a finite number"),
    ],
)
def test_check_scores_rejects_bad_returns(returned, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_scores(returned, 2)


def test_a_failing_grader_scores_zero_reports_and_fails_after_the_limit(monkeypatch):
    from workers.trainer import graders as module

    def broken(spec, completions, columns):
        raise ValueError("boom")

    monkeypatch.setitem(module.GRADERS, "regex", broken)
    specs = parse_graders([{"kind": "regex", "name": "rx", "pattern": "x"}, {"kind": "json_schema", "schema": {}}])
    events = []
    scorer = Scorer(specs, on_failure=lambda name, message: events.append((name, message)))
    first = scorer.score(["{}"], [{"prompt": "p"}])
    assert first.rewards == [0.5] and first.per_grader == {"rx": 0.0, "json_schema": 1.0}
    assert events == [("rx", "grader rx (regex) failed, batch scored 0: ValueError: boom")]
    scorer.score(["{}"], [{"prompt": "p"}])
    with pytest.raises(GraderFailed, match="grader rx \\(regex\\) failed 3 batches in a row: ValueError: boom"):
        scorer.score(["{}"], [{"prompt": "p"}])


def test_model_grader_template_and_score_parsing():
    from regex import compile as compile_regex

    from service.grader_specs import render_template
    from workers.trainer.graders import _judge_score

    spec = parse_graders([{"kind": "model", "model": "base:builtin:tiny", "prompt": "{{ {label} }} {prompt}: {completion}"}])[0]
    assert spec.fields_read() == {"label"}  # {prompt} and {completion} are not record fields
    values = {"label": "spam", "prompt": "p", "completion": "c"}
    assert render_template(spec.prompt, values) == "{ spam } p: c"
    # Plain substitution: no attribute or index access (str.format would evaluate these).
    assert render_template("{completion.__class__} {completion[0]} {completion}", values) == "{completion.__class__} {completion[0]} c"
    first_number = compile_regex(spec.score_pattern)
    assert [_judge_score(first_number, reply, 10) for reply in ["7.5/10", "Score: 12", "-3", "none", "1e999"]] == [
        0.75, 1.0, 0.0, None, 0.1]  # clamped to [0, 1]; the first number of "1e999" is 1
    assert _judge_score(compile_regex(r"(\S+)"), "1e999", 1) is None  # not finite: no score
    grouped = compile_regex(r"SCORE=(\d+)")
    assert _judge_score(grouped, "2 of 5, SCORE=4", 5) == 0.8 and _judge_score(grouped, "4", 5) is None
    with pytest.raises(ValidationError, match="must contain \\{completion\\}"):
        parse_graders([{"kind": "model", "model": "base:builtin:tiny", "prompt": "{{completion}}"}])
