import pytest

from service.settings import Settings
from tests.inference_helpers import trained_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A real 10-step tiny training run (checkpoints at steps 5 and 10)."""
    return trained_run(str(tmp_path_factory.mktemp("trained")))


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path / "home", inference_backend="transformers", inference_device="cpu")
