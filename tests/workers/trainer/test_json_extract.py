"""builtin:json_extract: seeded splits, held-out prompts unseen, its graders on hand-made outputs."""

import pytest

from service.grader_specs import parse_graders
from service.settings import Settings
from service.specs import DataSourceSpec
from workers.trainer.data import DatasetError, load_records
from workers.trainer.graders import Scorer
from workers.trainer.json_extract import IN_DISTRIBUTION, JSON_EXTRACT_GRADERS, json_extract_split


def test_splits_are_seeded_and_held_out():
    train, ood = json_extract_split("train"), json_extract_split("ood")
    assert len(train) == 20_000 and len(ood) == 1_000 and len(json_extract_split("id")) == 1_000
    assert json_extract_split("id")[0] == json_extract_split("test")[0]
    assert not {r["prompt"] for r in json_extract_split("id")} & {r["prompt"] for r in train}
    # OOD texts use none of the in-distribution templates' shapes ("lives in" only there)
    assert all("lives in" not in r["prompt"] for r in ood)
    assert any("lives in" in r["prompt"] for r in train[:50]) and IN_DISTRIBUTION
    first = train[0]
    assert set(first) == {"prompt", "completion", "name", "age", "city"} and first["prompt"].startswith("JSON of: ")


def test_loaded_through_the_data_layer(tmp_path):
    records = load_records(DataSourceSpec(source="builtin:json_extract", split="validation", limit=3), Settings(home=tmp_path))
    assert len(records) == 3 and records[0]["completion"].startswith('{"name":')
    with pytest.raises(DatasetError, match="builtin:json_extract has splits train, validation, id, ood"):
        load_records(DataSourceSpec(source="builtin:json_extract", split="nope"), Settings(home=tmp_path))


def test_its_graders_score_hand_made_outputs():
    record = {"prompt": "JSON of: Mia is 34 and lives in Oslo.", "name": "Mia", "age": 34, "city": "Oslo"}
    outputs = [
        '{"name":"Mia","age":34,"city":"Oslo"}',  # all right
        '{"name":"Mia","age":35,"city":"Oslo"}',  # schema + 2 of 3 fields
        '{"name":"Mia","age":"34","city":"Oslo"}',  # age a string: schema fails, the text still matches
        "Mia, 34, Oslo",  # not JSON
    ]
    scored = Scorer(parse_graders(JSON_EXTRACT_GRADERS)).score(outputs, [record] * 4)
    assert scored.rewards == pytest.approx([1.0, 0.3 + 0.7 * 2 / 3, 0.7, 0.0])
    assert scored.correct == [1.0, 0.0, 0.0, 0.0]
    assert scored.per_grader == pytest.approx({"schema": 0.5, "name": 0.75, "age": 0.5, "city": 0.75})
