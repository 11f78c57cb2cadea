"""builtin:json_extract: a task that is not math. Seeded short texts about a person; the
model extracts them into a JSON object.

    prompt:     "JSON of: Mia is 34 and lives in Oslo."
    completion: '{"name":"Mia","age":34,"city":"Oslo"}'
    fields:     name, age, city (the graders' columns)

In-distribution splits (train, validation, id) use the plain sentence templates; `ood`
uses other templates with the facts in another order and a distracting clause, so the
model has to find the fields, not copy a fixed position. Held-out splits drop any prompt
that also occurs in train (like builtin:arithmetic). Graded by `JSON_EXTRACT_GRADERS`:
the schema (30%) plus one string_check per field (70% together).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache

# split -> (seed, number of texts, out of distribution)
SPLITS = {"train": (5101, 20_000, False), "validation": (5202, 500, False), "id": (5303, 1_000, False), "ood": (5404, 1_000, True)}
_ALIASES = {"test": "id"}

NAMES = ("Tom", "Ana", "Liam", "Mia", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Yuki", "Ella", "Sam", "Ivy", "Ken", "Leo", "Nora")
CITIES = ("Oslo", "Lima", "Rome", "Paris", "Cairo", "Delhi", "Tokyo", "Quito", "Accra", "Dubai", "Seoul", "Perth")
IN_DISTRIBUTION = ("{name} is {age} and lives in {city}.", "{name}, {age}, lives in {city}.", "{name} lives in {city} and is {age}.")
OUT_OF_DISTRIBUTION = (
    "Living in {city} for years now, {name} turned {age} last week.",
    "In {city}, where it rained, {name} (age {age}) met a friend.",
    "Age {age}: that is {name}, who moved to {city}.",
)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
JSON_EXTRACT_GRADERS = [
    {"kind": "json_schema", "name": "schema", "weight": 0.3, "schema": SCHEMA},
    *({"kind": "string_check", "name": field, "weight": 0.7 / 3, "field": field, "json_key": field} for field in ("name", "age", "city")),
]


class JsonExtractError(ValueError):
    """An unknown split."""


@lru_cache(maxsize=None)
def json_extract_split(split: str) -> tuple[dict, ...]:
    """The records of one split; the same in every process (cached)."""
    split = _ALIASES.get(split, split)
    if split not in SPLITS:
        raise JsonExtractError(f"builtin:json_extract has splits {', '.join(SPLITS)}; got {split!r}")
    seed, count, ood = SPLITS[split]
    seen = set() if split == "train" else {r["prompt"] for r in json_extract_split("train")}
    rng = random.Random(seed)
    records: list[dict] = []
    while len(records) < count:
        record = json_extract_record(rng, ood)
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            records.append(record)
    return tuple(records)


def json_extract_record(rng: random.Random, ood: bool) -> dict:
    """One text and its extraction."""
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
    text = rng.choice(OUT_OF_DISTRIBUTION if ood else IN_DISTRIBUTION).format(name=name, age=age, city=city)
    target = json.dumps({"name": name, "age": age, "city": city}, separators=(",", ":"))
    return {"prompt": f"JSON of: {text}", "completion": target, "name": name, "age": age, "city": city}
