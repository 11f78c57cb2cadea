"""Data sources, the arithmetic generator and resumable batch streams."""

import json
import re
from pathlib import Path

import pytest

from service.settings import Settings
from service.specs import DataSourceSpec
from workers.trainer.data import (
    BatchStream,
    DatasetError,
    arithmetic_split,
    gsm8k_record,
    load_records,
    records_from_rows,
    require_answers,
    require_fields,
    require_completions,
    svamp_record,
)

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path, datasets_dir=SHARED_DATA)


def source(name="builtin:arithmetic", split="train", limit=None):
    return DataSourceSpec(source=name, split=split, limit=limit)


# ---------------------------------------------------------------- builtin:arithmetic


def test_split_sizes_and_limit(settings):
    sizes = {split: len(load_records(source(split=split), settings)) for split in ("train", "validation", "id", "ood")}
    assert sizes == {"train": 20_000, "validation": 500, "id": 1_000, "ood": 1_000}
    assert len(load_records(source(split="ood", limit=7), settings)) == 7
    assert load_records(source(split="test"), settings) == load_records(source(split="id"), settings)


def test_unknown_split_is_an_error(settings):
    with pytest.raises(DatasetError, match="splits train, validation, id, ood"):
        load_records(source(split="dev"), settings)


def test_generator_is_deterministic_across_processes():
    import subprocess
    import sys

    code = (
        "import json; from workers.trainer.data import arithmetic_split as s; "
        "print(json.dumps([s('train')[i] for i in (0, 1, 19999)] + [s('ood')[5]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    here = [arithmetic_split("train")[i] for i in (0, 1, 19999)] + [arithmetic_split("ood")[5]]
    assert json.loads(out.stdout) == here


def test_held_out_splits_are_disjoint_from_train():
    train = {record["prompt"] for record in arithmetic_split("train")}
    validation = {record["prompt"] for record in arithmetic_split("validation")}
    for split in ("validation", "id", "ood"):
        assert not train & {record["prompt"] for record in arithmetic_split(split)}
    for split in ("id", "ood"):
        assert not validation & {record["prompt"] for record in arithmetic_split(split)}


@pytest.mark.parametrize("split", ["train", "validation", "id", "ood"])
def test_every_solution_step_is_right_and_ends_in_the_answer(split):
    for record in arithmetic_split(split):
        steps = STEP.findall(record["completion"])
        assert steps, record
        start_value = int(re.search(r" has (\d+) ", record["prompt"]).group(1))
        value = start_value
        for left, sign, right, result in steps:
            assert int(left) == value  # each step starts from the previous result
            value = value + int(right) if sign == "+" else value - int(right)
            assert value == int(result) and value >= 0
        assert record["completion"].endswith(f"#### {value}")
        assert record["answer"] == str(value)
        # Every operand in the solution is stated in the question.
        for _, _, right, _ in steps:
            assert re.search(rf"\b{right}\b", record["prompt"])


def _operations_and_operands(records):
    steps = [STEP.findall(record["completion"]) for record in records]
    operands = [int(right) for record_steps in steps for _, _, right, _ in record_steps]
    return [len(s) for s in steps], operands


def test_ood_has_more_steps_and_larger_operands():
    id_ops, id_operands = _operations_and_operands(arithmetic_split("id"))
    ood_ops, ood_operands = _operations_and_operands(arithmetic_split("ood"))
    assert set(id_ops) == {2, 3} and set(ood_ops) == {4, 5}
    assert max(id_operands) <= 50 and min(id_operands) >= 1
    assert max(ood_operands) > 50 and max(ood_operands) <= 99  # larger, never 3 digits


def test_generator_varies_names_objects_and_verbs():
    prompts = [record["prompt"] for record in arithmetic_split("validation")]
    assert len({p.split()[0] for p in prompts}) > 10
    assert len({p.split()[3] for p in prompts}) > 10
    assert any(" - " in r["completion"] for r in arithmetic_split("validation"))


# ---------------------------------------------------------------- gsm8k and svamp


def test_gsm8k_adapter_on_a_real_row():
    row = {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    }
    record = gsm8k_record(row)
    assert record["prompt"] == row["question"]
    assert record["completion"] == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"
    )
    assert record["answer"] == "72"
    assert gsm8k_record({"question": "q", "answer": "a\n#### 1,000"})["answer"] == "1000"
    with pytest.raises(DatasetError, match="no '#### n' line"):
        gsm8k_record({"question": "q", "answer": "no marker"})


@needs_shared_data
def test_gsm8k_files(settings):
    train = load_records(source("gsm8k", "train"), settings)
    test = load_records(source("gsm8k", "test", limit=5), settings)
    assert len(train) == 7473 and len(test) == 5
    assert all("<<" not in r["completion"] and re.fullmatch(r"-?[\d.]+", r["answer"]) for r in train)
    with pytest.raises(DatasetError, match="splits: train, test"):
        load_records(source("gsm8k", "validation"), settings)


def test_svamp_record_solution_from_equation():
    row = {"Body": "Jerry had 4 cars. He bought 13 more", "Question": "How many now?",
           "Equation": "( ( 4.0 + 13.0 ) * 15.0 )", "Answer": 255.0}
    record = svamp_record(row)
    assert record == {
        "prompt": "Jerry had 4 cars. He bought 13 more, how many now?",
        "completion": "4 + 13 = 17. 17 * 15 = 255. #### 255",
        "answer": "255",
    }


@needs_shared_data
def test_svamp_file(settings):
    records = load_records(source("svamp", "test"), settings)
    assert len(records) == 999  # chal-680 is mislabelled (4 - 2 + 3 labelled 1) and dropped
    assert all(r["completion"].endswith(f"#### {r['answer']}") and not r["answer"].endswith(".0") for r in records)
    with pytest.raises(DatasetError, match="one split, 'test'"):
        load_records(source("svamp", "train"), settings)


# ---------------------------------------------------------------- uploaded files and HF


def test_uploaded_file(settings):
    files = settings.resolved_artifacts_dir / "files"
    files.mkdir(parents=True)
    file_id = "0123456789abcdef0123456789abcdef"
    (files / f"{file_id}.jsonl").write_text('{"prompt": "1+1?", "answer": 2}\n{"prompt": "p", "completion": "c"}\n')
    records = load_records(source(f"file:{file_id}"), settings)
    assert records == [{"prompt": "1+1?", "answer": "2"}, {"prompt": "p", "completion": "c"}]
    with pytest.raises(DatasetError, match="record 2"):
        require_answers(records, "the RL dataset")
    with pytest.raises(DatasetError, match="not found"):
        load_records(source("file:" + "f" * 32), settings)


def test_uploaded_file_errors_and_symlink_escape(settings, tmp_path):
    files = settings.resolved_artifacts_dir / "files"
    files.mkdir(parents=True)
    (files / f"{'a' * 32}.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(DatasetError, match="line 1: a record needs"):
        load_records(source("file:" + "a" * 32), settings)
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"prompt": "x", "answer": 1}\n')
    (files / f"{'b' * 32}.jsonl").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the uploads folder"):
        load_records(source("file:" + "b" * 32), settings)


def test_hf_rows_are_adapted():
    import datasets

    gsm = datasets.Dataset.from_list([{"question": "q", "answer": "1+1 = <<1+1=2>>2\n#### 2"}])
    assert records_from_rows(gsm, "hf:x") == [{"prompt": "q", "completion": "1+1 = 2\n#### 2", "answer": "2"}]
    plain = datasets.Dataset.from_list([{"prompt": "p", "answer": 3, "label": "kept for graders"}])
    assert records_from_rows(plain, "hf:x") == [{"prompt": "p", "answer": "3", "label": "kept for graders"}]
    chat = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    assert records_from_rows(chat, "hf:x") == [{"prompt": [{"role": "user", "content": "hi"}], "completion": "yo"}]
    with pytest.raises(DatasetError, match="needs question/answer columns"):
        records_from_rows(datasets.Dataset.from_list([{"text": "t"}]), "hf:x")


def test_hf_offline_gives_a_clear_error():
    # huggingface_hub and datasets read the offline switches at import: use a fresh process.
    import os
    import subprocess
    import sys

    code = (
        "from service.settings import Settings; from service.specs import DataSourceSpec\n"
        "from workers.trainer.data import DatasetError, load_records\n"
        "try:\n    load_records(DataSourceSpec(source='hf:nobody/no-such-dataset'), Settings())\n"
        "except DatasetError as error:\n    print(error)\n"
    )
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("could not load hf:nobody/no-such-dataset split 'train' (offline mode"), out.stderr


def test_hf_source_that_is_a_local_path_is_refused(settings, monkeypatch, tmp_path):
    (tmp_path / "my" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="names a local path"):
        load_records(source("hf:my/data"), settings)


def test_require_helpers_pass_complete_records():
    records = list(arithmetic_split("validation"))
    assert require_answers(records, "RL") is records
    assert require_completions(records, "SFT") is records


# ---------------------------------------------------------------- BatchStream


def test_batch_stream_covers_each_epoch_and_reshuffles():
    records = [{"prompt": str(i), "answer": str(i)} for i in range(10)]
    stream = BatchStream(records, seed=3)
    first, second = stream.next_batch(10), stream.next_batch(10)
    assert sorted(r["prompt"] for r in first) == sorted(r["prompt"] for r in records)
    assert first != second and sorted(map(str, first)) == sorted(map(str, second))
    assert stream.state_dict() == {"epoch": 1, "position": 10}


def test_batch_stream_resumes_exactly():
    records = [{"prompt": str(i), "answer": str(i)} for i in range(7)]
    straight = BatchStream(records, seed=11)
    expected = [straight.next_batch(3) for _ in range(10)]
    first_half = BatchStream(records, seed=11)
    got = [first_half.next_batch(3) for _ in range(4)]
    state = json.loads(json.dumps(first_half.state_dict()))  # survives a JSON checkpoint
    resumed = BatchStream(records, seed=11)
    resumed.load_state_dict(state)
    got += [resumed.next_batch(3) for _ in range(6)]
    assert got == expected


def test_batch_stream_needs_records():
    with pytest.raises(ValueError):
        BatchStream([], seed=0)


def test_require_fields_names_the_missing_field():
    records = [{"prompt": "a", "label": "x"}, {"prompt": "b"}]
    assert require_fields(records, set(), "RL") is records
    with pytest.raises(DatasetError, match=r"RL needs 'label' on every record \(a grader reads it\), but 1 of 2 have none \(first: record 2\)"):
        require_fields(records, {"label"}, "RL")
