"""The spec's `resources` block (issue 14): defaults keep one process, limits name the field."""

import pytest
from pydantic import ValidationError

from service.settings import get_settings
from service.specs import JobSpec, spec_error_lines


def errors_for(raw: dict) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(raw)
    return spec_error_lines(caught.value)


def test_defaults_are_one_device_on_one_node():
    resources = JobSpec.model_validate({"method": "sft"}).resources
    assert (resources.devices, resources.nodes, resources.world_size) == (1, 1, 1)
    assert not (resources.mixed_precision or resources.activation_checkpointing or resources.cpu_offload)


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        ({"resources": {"devices": 0}}, "resources.devices: Input should be greater than or equal to 1"),
        ({"resources": {"devices": 9}}, "resources.devices = 9 exceeds this deployment's limit of 8"),
        ({"resources": {"nodes": 2}}, "resources.nodes = 2 exceeds this deployment's limit of 1"),
        ({"resources": {"gpus": 2}}, "resources.gpus: Extra inputs are not permitted"),
        ({"resources": {"devices": 2}, "training": {"sft_batch_size": 3}},
         "training.sft_batch_size = 3 must be a multiple of devices x nodes = 2"),
        ({"resources": {"devices": 2}, "training": {"sft_batch_size": 4, "rl_prompts_per_step": 3}},
         "training.rl_prompts_per_step = 3 must be a multiple of devices x nodes = 2"),
        ({"resources": {"devices": 2}, "training": {"lora": {}}}, "training.lora is not supported"),
    ],
)
def test_bad_resources_get_one_line_naming_the_field(raw, hint):
    lines = errors_for(raw)
    assert all("\n" not in line for line in lines)
    assert any(hint in line for line in lines), lines


def test_device_limit_follows_the_deployment(monkeypatch):
    monkeypatch.setenv("AMFT_MAX_DEVICES", "2")
    monkeypatch.setenv("AMFT_MAX_NODES", "2")
    get_settings.cache_clear()
    try:
        assert any("resources.devices = 4 exceeds this deployment's limit of 2" in line
                   for line in errors_for({"resources": {"devices": 4}}))
        assert JobSpec.model_validate({"resources": {"devices": 2}}).resources.world_size == 2
        assert any("training.sft_batch_size = 6 must be a multiple of devices x nodes = 4" in line
                   for line in errors_for({"resources": {"devices": 2, "nodes": 2}, "training": {"sft_batch_size": 6}}))
    finally:
        monkeypatch.delenv("AMFT_MAX_DEVICES")
        monkeypatch.delenv("AMFT_MAX_NODES")
        get_settings.cache_clear()
