"""Headless Chromium (Debian's package, installed by scripts/setup-browser.sh when missing)
driven by Playwright through executable_path: `playwright install` is never run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path(os.environ.get("AMFT_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("AMFT_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def ensure_chromium() -> None:
    if not CHROMIUM.exists():
        setup = subprocess.run([str(ROOT / "scripts" / "setup-browser.sh")], capture_output=True, text=True)
        if not CHROMIUM.exists():
            pytest.skip(f"no Chromium at {CHROMIUM} and scripts/setup-browser.sh could not install it: {setup.stderr[-300:]}")


@pytest.fixture(scope="module")
def browser():
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def sign_in(page, url: str, key: str) -> None:
    """Open the dashboard and sign in with `key` (as a person does: type it, press Enter)."""
    page.goto(f"{url}/ui/")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
