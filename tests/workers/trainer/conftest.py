import pytest

from service.settings import get_settings


@pytest.fixture(autouse=True)
def amft_home(tmp_path, monkeypatch):
    """Each test gets its own AMFT_HOME so caches and artifacts never leak between tests."""
    monkeypatch.setenv("AMFT_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()
