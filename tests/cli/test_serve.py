"""`amft serve`, `amft keys` and `amft demo` as a user runs them, on the embedded default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def amft_env(tmp_path) -> tuple[dict, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMFT_")}
    return {**env, "AMFT_HOME": str(tmp_path / "home"), "AMFT_API_PORT": str(port)}, port


def amft(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def test_serve_keys_and_ctrl_c(tmp_path):
    env, port = amft_env(tmp_path)
    serve = subprocess.Popen(amft("serve"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, what="amft serve to be ready")
        key = subprocess.run(amft("keys", "create", "--tenant", "me"), cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert key.startswith("amft_")
        assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {key}"}).json() == {"jobs": [], "next_cursor": None}
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = serve.communicate(timeout=90)
        assert serve.returncode == 0, output
        assert "amft serve: stopped" in output
        assert (tmp_path / "home" / "amft.db").exists() and (tmp_path / "home" / "broker.db").exists()
    finally:
        if serve.poll() is None:
            serve.kill()


def test_demo_trains_and_streams(tmp_path):
    env, port = amft_env(tmp_path)
    demo = subprocess.run(amft("demo", "--steps", "4"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["1/4", "2/4", "3/4", "4/4"]
    assert any("mu" in line and "ETA" in line for line in lines)
    assert any(line.strip().startswith("checkpoint step 4:") for line in lines)
    assert any(line.endswith("succeeded") for line in lines)
