"""Training and evaluation data: every source becomes a list of `Record`s.

Sources (`DataSourceSpec.source`, validated in service/specs.py):

- `builtin:arithmetic`: seeded multi-step word problems, see `arithmetic_split`.
- `builtin:json_extract`: seeded texts to extract into JSON (workers/trainer/json_extract.py).
- `gsm8k`: `<datasets_dir>/gsm8k/{train,test}.jsonl`, through `gsm8k_record`.
- `svamp`: `<datasets_dir>/svamp/SVAMP.json`. It has no train/test division, so the whole
  file is the single split `test`; it serves as out-of-distribution evaluation. Problems
  whose Equation disagrees with their Answer label are dropped (one of the 1,000).
- `file:<id>`: an uploaded JSONL file in `<artifacts>/files/`. A file has no splits: the
  spec's split is ignored.
- `hf:<org>/<name>`: `datasets.load_dataset(id, split=split)` for hub ids only (never a
  packaged builder, path, glob or data_files); honours HF_DATASETS_OFFLINE and
  HF_HUB_OFFLINE. Rows need `question`/`answer` (GSM8K style), `messages` (chat) or
  `prompt` plus `completion`, `answer` or other grader columns (service/records.py).

`BatchStream` then serves seeded, resumable batches from a list of records.
"""

from __future__ import annotations

import json
import os
import random
import re
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import NotRequired, TypedDict

from service.records import RecordError, parse_jsonl, parse_record
from service.settings import Settings
from service.specs import DataSourceSpec, hub_dataset_problem


class Record(TypedDict, total=False):
    """One example. `prompt` is text or chat messages ({"role", "content"} dicts); any
    other key is a field the graders read as a column (service/records.py)."""

    prompt: str | list[dict[str, str]]
    completion: NotRequired[str]  # expert solution ending in "#### n", for SFT
    answer: NotRequired[str]  # ground truth for the verifier, always a string


class DatasetError(ValueError):
    """A data source cannot be loaded or does not fit its use; the message says why."""


def load_records(source: DataSourceSpec, settings: Settings) -> list[Record]:
    """Load the records of one data source and split, then keep the first `limit`."""
    name = source.source
    if name == "builtin:arithmetic":
        records = [dict(record) for record in arithmetic_split(source.split)]
    elif name == "builtin:json_extract":
        from workers.trainer.json_extract import JsonExtractError, json_extract_split

        try:
            records = [dict(record) for record in json_extract_split(source.split)]
        except JsonExtractError as error:
            raise DatasetError(str(error)) from None
    elif name == "gsm8k":
        records = _load_gsm8k(settings.datasets_dir, source.split)
    elif name == "svamp":
        records = _load_svamp(settings.datasets_dir, source.split)
    elif name.startswith("file:"):
        records = _load_uploaded(settings.resolved_artifacts_dir / "files", name.removeprefix("file:"))
    elif name.startswith("hf:"):
        records = _load_hf(name.removeprefix("hf:"), source.split)
    else:
        raise DatasetError(f"unknown data source {name!r}")
    if not records:
        raise DatasetError(f"{name} split {source.split!r} has no records")
    return records[: source.limit] if source.limit else records


def require_answers(records: list[Record], purpose: str) -> list[Record]:
    """Return `records` if every one has an answer, else a DatasetError naming `purpose`."""
    return require_fields(records, {"answer"}, purpose)


def require_fields(records: list[Record], fields: set[str], purpose: str) -> list[Record]:
    """Return `records` if every one has each field the graders read, else a DatasetError.

    RL rewards, the reward utility and evaluation need what their graders read (`answer`
    for math_verify, any field for the others); SFT does not.
    """
    for name in sorted(fields):
        missing = [index for index, record in enumerate(records) if record.get(name) in (None, "")]
        if missing:
            raise DatasetError(
                f"{purpose} needs {name!r} on every record (a grader reads it), but {len(missing)} of "
                f"{len(records)} have none (first: record {missing[0] + 1})"
            )
    return records


def require_completions(records: list[Record], purpose: str) -> list[Record]:
    """Return `records` if every one has an expert completion (needed by SFT)."""
    missing = [index for index, record in enumerate(records) if not record.get("completion")]
    if missing:
        raise DatasetError(
            f"{purpose} needs a 'completion' on every record, but {len(missing)} of "
            f"{len(records)} have none (first: record {missing[0] + 1})"
        )
    return records


# ---------------------------------------------------------------- builtin:arithmetic

# split -> (seed, number of problems, operations (min, max), largest operand)
ARITHMETIC_SPLITS = {
    "train": (1001, 20_000, (2, 3), 50),
    "validation": (2002, 500, (2, 3), 50),
    "id": (3003, 1_000, (2, 3), 50),
    "ood": (4004, 1_000, (4, 5), 99),
}
_SPLIT_ALIASES = {"test": "id"}

# Vocabulary of the generator. Changing it changes every split: treat it as data.
NAMES = (
    "Tom", "Ana", "Liam", "Mia", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Yuki", "Ella", "Sam",
    "Priya", "Jonas", "Chloe", "Mateo", "Aisha", "Ben", "Ivy", "Kofi", "Nora", "Leo", "Sofia", "Ken",
)
THINGS = (
    "apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells",
    "cards", "balloons", "crayons", "buttons", "toy cars", "seashells", "beads", "postcards",
    "oranges", "candies", "feathers",
)
ADD_VERBS = (
    "buys {n} more", "finds {n} more", "gets {n} more from a friend", "receives {n} more as a gift",
    "wins {n} more", "collects {n} more", "is given {n} more", "picks up {n} more",
)
TAKE_VERBS = (
    "gives away {n}", "loses {n}", "sells {n}", "gives {n} to a friend", "donates {n}",
    "trades away {n}", "uses {n}", "gives {n} to a neighbour",
)
CONNECTORS = ("Then ", "After that, ", "Later, ", "Next, ", "The next day, ")
QUESTIONS = (
    "How many {things} does {name} have now?",
    "How many {things} does {name} have in the end?",
    "How many {things} does {name} end up with?",
)


@lru_cache(maxsize=None)
def arithmetic_split(split: str) -> tuple[Record, ...]:
    """The records of one built-in arithmetic split; the same in every process (cached).

    In-distribution splits (train, validation, id) have 2-3 operations on operands 1-50;
    `ood` has 4-5 operations on operands 1-99. Held-out splits drop any prompt that also
    occurs in train (and id/ood any prompt in validation), so they are truly unseen.
    """
    split = _SPLIT_ALIASES.get(split, split)
    if split not in ARITHMETIC_SPLITS:
        raise DatasetError(f"builtin:arithmetic has splits {', '.join(ARITHMETIC_SPLITS)}; got {split!r}")
    seed, count, (min_ops, max_ops), max_operand = ARITHMETIC_SPLITS[split]
    seen: set[str] = set()
    if split != "train":
        seen |= {record["prompt"] for record in arithmetic_split("train")}
    if split in ("id", "ood"):
        seen |= {record["prompt"] for record in arithmetic_split("validation")}
    rng = random.Random(seed)
    records: list[Record] = []
    while len(records) < count:
        record = arithmetic_problem(rng, rng.randint(min_ops, max_ops), max_operand)
        if record["prompt"] not in seen:
            records.append(record)
    return tuple(records)


def arithmetic_problem(rng: random.Random, num_ops: int, max_operand: int) -> Record:
    """One word problem with `num_ops` additions/subtractions; no value ever goes negative."""
    name, things = rng.choice(NAMES), rng.choice(THINGS)
    value = rng.randint(1, max_operand)
    sentences = [f"{name} has {value} {things}."]
    steps = []
    for index in range(num_ops):
        # Subtract at most what is there, so every intermediate count stays >= 0.
        if value >= 1 and rng.random() < 0.5:
            operand = rng.randint(1, min(value, max_operand))
            verb, result, sign = rng.choice(TAKE_VERBS), value - operand, "-"
        else:
            operand = rng.randint(1, max_operand)
            verb, result, sign = rng.choice(ADD_VERBS), value + operand, "+"
        opener = "" if index == 0 else rng.choice(CONNECTORS)
        sentences.append(f"{opener}{name} {verb.format(n=operand)}.")
        steps.append(f"{value} {sign} {operand} = {result}.")
        value = result
    sentences.append(rng.choice(QUESTIONS).format(name=name, things=things))
    return {
        "prompt": " ".join(sentences),
        "completion": " ".join(steps) + f" #### {value}",
        "answer": str(value),
    }


# ---------------------------------------------------------------- gsm8k

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_FINAL_ANSWER = re.compile(r"####\s*(.+?)\s*$")


def gsm8k_record(row: dict) -> Record:
    """A GSM8K row ({"question", "answer"}) as a record.

    The solution keeps its reasoning and final `#### n` line but loses the calculator
    annotations (`<<48/2=24>>`), which a model cannot produce usefully; the answer is the
    number after `####` without thousands separators.
    """
    try:
        question, solution = row["question"], row["answer"]
    except KeyError as missing:
        raise DatasetError(f"a GSM8K row needs 'question' and 'answer'; {missing} is missing") from None
    final = _FINAL_ANSWER.search(solution)
    if final is None:
        raise DatasetError(f"GSM8K answer has no '#### n' line: {solution[-80:]!r}")
    return {
        "prompt": question,
        "completion": _CALCULATOR_NOTE.sub("", solution),
        "answer": final.group(1).replace(",", ""),
    }


def _load_gsm8k(datasets_dir: Path, split: str) -> list[Record]:
    path = datasets_dir / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(f"gsm8k split {split!r} not found at {path} (splits: train, test)")
    with path.open(encoding="utf-8") as lines:
        return [gsm8k_record(json.loads(line)) for line in lines if line.strip()]


# ---------------------------------------------------------------- svamp


def _load_svamp(datasets_dir: Path, split: str) -> list[Record]:
    if split != "test":
        raise DatasetError(f"svamp has one split, 'test' (all 1,000 problems); got {split!r}")
    path = datasets_dir / "svamp" / "SVAMP.json"
    if not path.is_file():
        raise DatasetError(f"svamp not found at {path}")
    records = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        try:
            records.append(svamp_record(row))
        except DatasetError:
            continue  # a mislabelled problem (chal-680: its equation gives 5, its label 1)
    return records


def svamp_record(row: dict) -> Record:
    """A SVAMP problem as a record, with a step-by-step solution built from its Equation.

    Raises DatasetError when the Equation does not give the labelled Answer.
    """
    body, question = row["Body"].strip(), row["Question"].strip()
    if body.endswith((".", "?", "!")):
        prompt = f"{body} {question}"
    else:
        # Many bodies end in an "If ..." clause that the question completes.
        prompt = f"{body}, {question[:1].lower()}{question[1:]}"
    steps: list[str] = []
    value = _evaluate_equation(_tokenize_equation(row["Equation"]), steps)
    answer = _format_number(Fraction(str(row["Answer"])))
    if _format_number(value) != answer:
        raise DatasetError(f"SVAMP {row.get('ID')}: equation gives {_format_number(value)}, answer is {answer}")
    return {"prompt": prompt, "completion": " ".join(steps + [f"#### {answer}"]), "answer": answer}


def _tokenize_equation(equation: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?|[-+*/()]", equation)


def _evaluate_equation(tokens: list[str], steps: list[str]) -> Fraction:
    """Evaluate a fully parenthesised SVAMP equation, appending "a op b = c." per operation."""
    operations = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}

    def operand(position: int) -> tuple[Fraction, int]:
        if tokens[position] == "(":
            return expression(position + 1)
        return Fraction(tokens[position]), position + 1

    def expression(position: int) -> tuple[Fraction, int]:
        left, position = operand(position)
        while position < len(tokens) and tokens[position] in operations:
            op = tokens[position]
            right, position = operand(position + 1)
            result = operations[op](left, right)
            steps.append(f"{_format_number(left)} {op} {_format_number(right)} = {_format_number(result)}.")
            left = result
        if position < len(tokens) and tokens[position] == ")":
            position += 1
        return left, position

    return expression(0)[0]


def _format_number(value: Fraction) -> str:
    """14 for 14.0; up to 4 decimals otherwise."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.4f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------- uploaded files and HF

_FILE_ID = re.compile(r"^[0-9a-f]{32}$")


def _load_uploaded(folder: Path, file_id: str) -> list[Record]:
    if not _FILE_ID.match(file_id):
        raise DatasetError(f"file ids are 32 hex characters; got {file_id!r}")
    folder = folder.resolve()
    path = (folder / f"{file_id}.jsonl").resolve()
    # resolve() follows symlinks: a link pointing out of the uploads folder is refused.
    if not path.is_relative_to(folder):
        raise DatasetError(f"uploaded file {file_id} is outside the uploads folder")
    if not path.is_file():
        raise DatasetError(f"uploaded file {file_id} not found")
    try:
        with path.open("rb") as lines:
            return parse_jsonl(lines)
    except RecordError as error:
        raise DatasetError(f"uploaded file {file_id} is invalid: {error}") from None


def _load_hf(dataset_id: str, split: str) -> list[Record]:
    # Checked again here, where the data is loaded (issue 13, item 1): only a hub id
    # `org/name` reaches load_dataset, never a packaged builder (text, json, ... glob the
    # working directory), a path or data_files, whatever a stored spec says.
    problem = hub_dataset_problem(dataset_id)
    if problem:
        raise DatasetError(problem)
    # A hub id that is also a local path would make load_dataset read that local folder:
    # refuse it so a job spec cannot read files from the worker's working directory.
    if Path(dataset_id).exists() or Path(dataset_id + ".py").exists():
        raise DatasetError(f"hf:{dataset_id} names a local path; hf: sources are hub datasets only")
    import datasets  # heavy import, only needed for this source

    if _offline():  # both libraries read the switch at import; honour it when set later too
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        rows = datasets.load_dataset(dataset_id, split=split)
    except Exception as error:  # noqa: BLE001 - many failure types (network, offline, missing split)
        offline = " (offline mode: only datasets already in the local cache load)" if _offline() else ""
        raise DatasetError(f"could not load hf:{dataset_id} split {split!r}{offline}: {error}") from error
    return records_from_rows(rows, f"hf:{dataset_id}")


def records_from_rows(rows, source_name: str) -> list[Record]:
    """Rows of a table (e.g. a `datasets.Dataset`) as records: GSM8K style or record style."""
    columns = set(getattr(rows, "column_names", None) or (rows[0].keys() if len(rows) else ()))
    if {"question", "answer"} <= columns:
        return [gsm8k_record(row) for row in rows]
    if "prompt" in columns or "messages" in columns:
        try:
            return [
                parse_record({key: value for key, value in dict(row).items() if value is not None}, index)
                for index, row in enumerate(rows, start=1)
            ]
        except RecordError as error:
            raise DatasetError(f"{source_name}: row {error}") from None
    raise DatasetError(
        f"{source_name} needs question/answer columns, a messages column, or a prompt column with "
        f"completion, answer or grader fields; it has {', '.join(sorted(columns)) or 'none'}"
    )


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


# ---------------------------------------------------------------- batching


class BatchStream:
    """Endless shuffled batches over a fixed list of records, resumable exactly.

    Each epoch visits every record once in an order drawn from `seed + epoch`, so the
    order depends only on (seed, epoch) and `state_dict()` (two ints, JSON-friendly) is
    enough to continue a stream after a restart.
    """

    def __init__(self, records: list[Record], seed: int):
        if not records:
            raise ValueError("BatchStream needs at least one record")
        self.records = records
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def next_batch(self, n: int) -> list[Record]:
        """The next `n` records, continuing into the next epoch (reshuffled) when needed."""
        batch = []
        while len(batch) < n:
            if self.position == len(self.records):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            batch.append(self.records[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: {"epoch": int, "position": int}."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()` taken from a stream over the same records and seed."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if not 0 <= self.position <= len(self.records):
            raise ValueError(f"position {self.position} is outside this stream of {len(self.records)} records")
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(self.seed + epoch).shuffle(order)
        return order
