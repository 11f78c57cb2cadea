"""Dataset record validation: the checks the API runs on every uploaded JSONL line."""

import json

import pytest

from service.records import RecordError, parse_jsonl, parse_record


def test_valid_records_are_normalised():
    assert parse_record({"prompt": "2+2?", "answer": 4}, 1) == {"prompt": "2+2?", "answer": "4"}
    assert parse_record({"prompt": "x", "answer": 14.0}, 1)["answer"] == "14"
    assert parse_record({"prompt": "x", "answer": 2.5}, 1)["answer"] == "2.5"
    assert parse_record({"prompt": "x", "answer": " 7 "}, 1)["answer"] == "7"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    record = parse_record({"prompt": chat, "completion": "2 + 2 = 4. #### 4"}, 1)
    assert record == {"prompt": chat, "completion": "2 + 2 = 4. #### 4"}


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1, 2], "line 3: a record must be a JSON object, got an array"),
        ({"prompt": 5, "answer": "1"}, "line 3: 'prompt' must be a string or a list of chat messages"),
        ({"answer": "1"}, "line 3: 'prompt' (or 'messages') is required"),
        ({"prompt": "q"}, "line 3: a record needs a 'completion' (expert solution), an 'answer' or another field for the graders"),
        ({"prompt": "q", "an swer": "1"}, "line 3: field name(s) 'an swer' not allowed: use letters, digits and _ (not prompts, completions, messages)"),
        ({"prompt": "q", "completions": "1"}, "line 3: field name(s) 'completions' not allowed: use letters, digits and _ (not prompts, completions, messages)"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "line 3: 'messages' needs an assistant turn (the expert completion)"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "line 3: 'messages' needs at least one message before the assistant turn (the prompt)"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
         "line 3: 'messages' must end with the assistant turn (the expert completion)"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "prompt": "x"},
         "line 3: use either 'messages' or 'prompt'/'completion', not both"),
        ({"prompt": "q", "completion": [{"role": "user", "content": "x"}]}, "line 3: 'completion' as a list must be one assistant message"),
        ({"prompt": "q", "answer": True}, "line 3: 'answer' must be a string or a number"),
        ({"prompt": "q", "answer": float("nan")}, "line 3: 'answer' must be a finite number"),
        ({"prompt": "q", "completion": 3}, "line 3: 'completion' must be a non-empty string (or one assistant message)"),
        ({"prompt": "", "answer": "1"}, "line 3: 'prompt' must not be empty"),
        ({"prompt": [{"role": "bot", "content": "hi"}], "answer": "1"}, "line 3: 'prompt'[0].role must be one of system, user, assistant"),
        ({"prompt": [{"role": "user"}], "answer": "1"}, "line 3: 'prompt'[0] must be an object with 'role' and 'content' (and optionally 'name', 'weight')"),
    ],
)
def test_invalid_records_name_line_and_problem(obj, message):
    with pytest.raises(RecordError) as caught:
        parse_record(obj, 3)
    assert str(caught.value) == message


def test_jsonl_skips_blank_lines_and_accepts_bytes():
    lines = [b'{"prompt": "a", "answer": 1}\n', b"\n", '  \n', '{"prompt": "b", "completion": "c"}']
    assert parse_jsonl(lines) == [{"prompt": "a", "answer": "1"}, {"prompt": "b", "completion": "c"}]


def test_jsonl_byte_order_mark_is_ignored():
    assert parse_jsonl(['\ufeff{"prompt": "a", "answer": 1}']) == [{"prompt": "a", "answer": "1"}]


def test_jsonl_lists_every_problem_with_its_line_number():
    lines = [
        '{"prompt": "ok", "answer": 1}',
        "{not json",
        "[1]",
        "",
        '{"prompt": 3, "answer": 1}',
        b"\xff\xfe",
    ]
    with pytest.raises(RecordError) as caught:
        parse_jsonl(lines)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 5", "line 6"]
    assert problems[0].startswith("line 2: invalid JSON")
    assert problems[3] == "line 6: not valid UTF-8 text"
    assert str(caught.value).splitlines()[0] == "4 invalid line(s):"


def test_jsonl_error_list_is_capped():
    lines = ["oops"] * 50
    with pytest.raises(RecordError) as caught:
        parse_jsonl(lines, max_errors=5)
    assert len(caught.value.problems) == 5
    assert str(caught.value).splitlines()[0] == "50 invalid line(s), the first 5:"


@pytest.mark.parametrize("lines", [[], ["", "\n"]])
def test_empty_file_is_an_error(lines):
    with pytest.raises(RecordError, match="no records"):
        parse_jsonl(lines)


def test_records_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, service.records; print(any(m in sys.modules for m in ('torch', 'fastapi', 'celery')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_round_trip_through_json():
    record = {"prompt": "q", "completion": "c #### 1", "answer": "1"}
    assert parse_jsonl([json.dumps(record)]) == [record]


def test_extra_fields_are_kept_for_the_graders():
    record = parse_record({"prompt": "q", "label": "spam", "tests": ["assert f(1) == 2"], "score": 3}, 1)
    assert record == {"prompt": "q", "label": "spam", "tests": ["assert f(1) == 2"], "score": 3}


def test_openai_messages_become_prompt_and_completion():
    obj = {
        "messages": [
            {"role": "system", "content": "Extract JSON."},
            {"role": "user", "content": "Tom is 7.", "name": "u1"},
            {"role": "assistant", "content": '{"name": "Tom"}', "weight": 1},
        ],
        "name": "Tom",
    }
    assert parse_record(obj, 1) == {
        "prompt": [{"role": "system", "content": "Extract JSON."}, {"role": "user", "content": "Tom is 7."}],
        "completion": '{"name": "Tom"}',
        "name": "Tom",
    }


def test_trl_conversational_prompt_completion():
    obj = {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "#### 4"}], "answer": 4}
    assert parse_record(obj, 1) == {"prompt": [{"role": "user", "content": "2+2?"}], "completion": "#### 4", "answer": "4"}
