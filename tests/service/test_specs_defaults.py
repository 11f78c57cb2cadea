"""The spec's defaults agree with the benchmark, and the shipped examples are coherent."""

import json
from pathlib import Path

import pytest
import yaml

from service.specs import JobSpec

ROOT = Path(__file__).resolve().parents[2]


def test_eta_meta_default_is_the_benchmarks_pick():
    picks = json.loads((ROOT / "bench/results/algorithms.json").read_text())["picks"]
    assert JobSpec().controller.eta_meta == picks["eta_meta"]


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_each_example_validates_on_the_task_it_trains_on(example):
    spec = JobSpec.model_validate(yaml.safe_load(example.read_text()))
    # The meta-gradient's utility must measure the task RL trains on, not another one.
    assert spec.datasets.validation.source == spec.datasets.rl.source
