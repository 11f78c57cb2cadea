"""Setup refuses data that would fail later (issue 16): a validation set without the field
the meta step reads is a DatasetError before the first step, not a KeyError at a meta step."""

import pytest

from service.specs import JobSpec
from workers.trainer.data import DatasetError
from workers.trainer.loop import setup


def test_validation_without_answers_fails_at_setup():
    # builtin:json_extract records have no 'answer', which math_verify (the reward utility) reads.
    spec = JobSpec.model_validate({"method": "amft", "training": {"total_steps": 4, "warmup_steps": 1},
                                   "datasets": {"validation": {"source": "builtin:json_extract"}}})
    with pytest.raises(DatasetError, match=r"datasets.validation needs 'answer' on every record"):
        setup(spec)
