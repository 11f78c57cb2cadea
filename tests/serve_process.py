"""`amft serve` as a user runs it, in a subprocess, on the embedded default: a private AMFT_HOME
under the test's tmp_path, a free port, API keys made with `amft keys create`, and a close()
that always stops it (Ctrl-C, then SIGTERM, then SIGKILL) and any worker it left behind.

Shared by tests/cli/test_serve.py and the dashboard's browser test (tests/api/test_ui.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT, wait_for


def amft_env(tmp_path: Path) -> tuple[dict, int]:
    """The environment of a fresh install under tmp_path/home on a free port, and that port.
    No AMFT_* variable of the test run leaks in, so it is the embedded default."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMFT_")}
    return {**env, "AMFT_HOME": str(tmp_path / "home"), "AMFT_API_PORT": str(port)}, port


def amft(*args: str) -> list[str]:
    """The `amft ...` command line, run with this interpreter."""
    return [sys.executable, "-m", "cli.main", *args]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its new parent has not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def worker_pids(log: Path) -> dict[str, int]:
    """The newest pid `amft serve` printed for each worker."""
    pids = {}
    for line in log.read_text().splitlines():
        if match := re.match(r"amft serve: (\w+) worker pid (\d+)", line):
            pids[match.group(1)] = int(match.group(2))
    return pids


def readyz(url: str) -> tuple[int, dict]:
    """GET /readyz: (status code, body), or (0, {}) while nothing answers."""
    try:
        response = httpx.get(f"{url}/readyz", timeout=5)
        return response.status_code, response.json()
    except (httpx.HTTPError, ValueError):
        return 0, {}


def _is_worker(pid: int) -> bool:
    # A pid read from the log may have been reused by now: only a Celery worker is ours to kill.
    try:
        return b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Serve:
    """`amft serve` as a subprocess, its output in tmp_path/serve.out (read while it runs).
    Use it as a context manager, or call close() in a `finally`."""

    def __init__(self, tmp_path: Path, extra_env: dict[str, str] | None = None):
        env, self.port = amft_env(tmp_path)
        self.env = {**env, **(extra_env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.out"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(amft("serve"), cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def output(self) -> str:
        """What `amft serve` has printed so far."""
        return self.log.read_text()

    def wait_ready(self, timeout: float = 180) -> dict:
        """Wait for /readyz 200 (API, database, broker and every worker's queue served); its body."""
        return wait_for(lambda: (r := readyz(self.url))[0] == 200 and r[1], timeout, interval=0.5,
                        what=f"amft serve to be ready; output:\n{self.output()[-3000:]}")

    def key(self, tenant: str) -> str:
        """A new API key for `tenant`, made as a user does: `amft keys create --tenant NAME`."""
        return subprocess.run(amft("keys", "create", "--tenant", tenant), cwd=ROOT, env=self.env,
                              capture_output=True, text=True, check=True, timeout=120).stdout.strip()

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client for this server, with `key` as its Bearer token."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def close(self, timeout: float = 120) -> None:
        """Stop it however the test went: Ctrl-C, then SIGTERM, then SIGKILL; then kill any worker
        (with its pool, its process group) that outlived it."""
        for stop, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(stop)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        for pid in worker_pids(self.log).values():
            if alive(pid) and _is_worker(pid):
                with contextlib.suppress(ProcessLookupError):  # it may exit meanwhile
                    os.killpg(pid, signal.SIGKILL)  # the supervisor starts each worker in its own session
