"""The spec's defaults agree with the benchmark, and the shipped examples are coherent."""

from pathlib import Path

import pytest
import yaml

from service.specs import JobSpec

ROOT = Path(__file__).resolve().parents[2]


def test_controller_defaults_are_the_benchmarks_settings():
    # bench/controller.py is the benchmark of the gated controller (bench/results/controller.md).
    from bench.controller import AMFT

    controller = JobSpec().controller
    assert (controller.eta_meta, controller.meta_min_z) == (AMFT["eta_meta"], AMFT["meta_min_z"])


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_each_example_validates_on_the_task_it_trains_on(example):
    spec = JobSpec.model_validate(yaml.safe_load(example.read_text()))
    # The meta-gradient's utility must measure the task RL trains on, not another one.
    assert spec.datasets.validation.source == spec.datasets.rl.source
