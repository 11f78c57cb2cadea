"""The job spec: defaults that work, and a one-line error naming the field for each bad value."""

import pytest
from pydantic import ValidationError

from service.settings import get_settings
from service.specs import JobSpec, spec_error_lines


def errors_for(raw: dict) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(raw)
    return spec_error_lines(caught.value)


def test_a_minimal_spec_gets_working_defaults():
    spec = JobSpec.model_validate({"method": "amft"})
    assert spec.model == "builtin:tiny"
    assert spec.controller.mu0 == 0.8 and (spec.controller.mu_min, spec.controller.mu_max) == (0.05, 0.95)
    assert spec.controller.meta_form == "cosine" and spec.controller.target_entropy == "auto"
    assert spec.datasets.rl.source == "builtin:arithmetic"


@pytest.mark.parametrize(
    ("raw", "field", "hint"),
    [
        ({"methd": "amft"}, "methd", "Extra inputs are not permitted"),
        ({"method": "ppo"}, "method", "'amft'"),
        ({"model": "/etc/passwd"}, "model", "builtin:tiny"),
        ({"model": "local:../../secrets"}, "model", "local:<folder name>"),
        ({"training": {"total_steps": -5}}, "training.total_steps", "greater than or equal to 1"),
        ({"training": {"total_steps": 10**12}}, "spec", "training.total_steps = 1000000000000 exceeds"),
        ({"training": {"max_completion_tokens": 10**6}}, "spec", "training.max_completion_tokens"),
        ({"training": {"num_generations": 1}}, "training.num_generations", "greater than or equal to 2"),
        ({"training": {"sft_batch_size": 100000}}, "spec", "training.sft_batch_size"),
        ({"training": {"total_steps": 5, "warmup_steps": 10}}, "spec", "warmup_steps (10) must not exceed"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate", "greater than 0"),
        ({"training": {"temperature": 0}}, "training.temperature", "greater than 0"),
        ({"controller": {"mu_min": 0.9, "mu_max": 0.1}}, "controller", "mu_min (0.9) must not exceed mu_max (0.1)"),
        ({"controller": {"mu0": 1.5}}, "controller.mu0", "less than or equal to 1"),
        ({"controller": {"meta_form": "fancy"}}, "controller.meta_form", "'cosine'"),
        ({"controller": {"target_entropy": -1}}, "controller.target_entropy", "non-negative"),
        ({"datasets": {"sft": {"source": "/tmp/x.jsonl"}}}, "datasets.sft.source", "file:<32-hex file id>"),
        ({"datasets": {"rl": {"source": "gsm8k", "split": "../train"}}}, "datasets.rl.split", "pattern"),
    ],
)
def test_each_bad_field_gets_one_line_naming_it(raw, field, hint):
    lines = errors_for(raw)
    assert len(lines) >= 1
    assert all("\n" not in line for line in lines)
    matching = [line for line in lines if line.startswith(f"{field}:") and hint in line]
    assert matching, f"expected a line for {field} mentioning {hint!r}, got {lines}"


def test_limits_follow_deployment_settings(monkeypatch):
    monkeypatch.setenv("AMFT_MAX_TOTAL_STEPS", "50")
    get_settings.cache_clear()
    try:
        assert any("exceeds this deployment's limit of 50" in line for line in errors_for({"training": {"total_steps": 51}}))
        JobSpec.model_validate({"training": {"total_steps": 50}})
    finally:
        monkeypatch.delenv("AMFT_MAX_TOTAL_STEPS")
        get_settings.cache_clear()
