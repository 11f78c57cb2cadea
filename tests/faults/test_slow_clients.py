"""Issue 13, item 6: slow clients. Raw sockets that send a request's headers a line at a
time and never finish, that connect and send nothing, or that stay idle after a response,
are disconnected by the server; normal requests are served meanwhile. Run against the
production server command (read from docker/api.Dockerfile), `amft serve`, and the h11
protocol in process (uvicorn's other parser)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from tests.conftest import ROOT, settings_env, wait_for
from tests.faults.servers import free_port, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
HEADER_TIMEOUT, KEEP_ALIVE = 2, 2
GUARD_ENV = {"AMFT_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT), "AMFT_HTTP_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE)}


def production_command(port: int) -> list[str]:
    """The API image's CMD (docker/api.Dockerfile) on a loopback port with one process."""
    cmd = re.search(r'exec (uvicorn [^"]+)"', (ROOT / "docker" / "api.Dockerfile").read_text()).group(1)
    cmd = cmd.replace("0.0.0.0", "127.0.0.1").replace("--port 8000", f"--port {port}")
    return ["sh", "-c", "exec " + cmd.replace("${AMFT_API_WORKERS:-2}", "1")]


class SlowClient(threading.Thread):
    """Sends a request line, then one more header line every 0.5 s, never the blank line.
    `closed_after` is set when the server closes the connection (or resets it)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.closed_after: float | None = None
        self.answer = b""

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for i in range(240):  # 2 minutes: far past any timeout under test
                time.sleep(0.5)
                self.sock.sendall(f"X-Slow-{i}: y\r\n".encode())
        except OSError:  # the server closed: the send fails (broken pipe / reset)
            pass
        self.answer = _read_until_closed(self.sock)
        self.closed_after = time.monotonic() - started


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except OSError:
        pass
    return data


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes `sock` (recv returns EOF or a reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def check_slow_clients(port: int) -> str:
    """Assert the three kinds of slow client are dropped while a normal request is served."""
    slow = SlowClient(port)
    slow.start()
    silent = socket.create_connection(("127.0.0.1", port), timeout=60)
    idle = socket.create_connection(("127.0.0.1", port), timeout=60)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = idle.recv(4096)
    assert first.startswith(b"HTTP/1.1 200"), first
    # Served while the slow clients hold their connections.
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json() == {"status": "ok"}
    wait_for(lambda: slow.closed_after is not None, 60, what="the slow-header client to be disconnected")
    assert slow.answer.startswith(b"HTTP/1.1 408"), slow.answer
    assert _closed_by_server(silent, 60), "a connection that sent nothing was kept open"
    assert _closed_by_server(idle, 60), "an idle kept-alive connection was kept open"
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
    return (f"slow headers: 408 + closed after {slow.closed_after:.1f} s; silent and idle kept-alive "
            f"connections closed; /healthz 200 during and after")


def _serve(command: list[str], env: dict, log_path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("server", ["production", "amft_serve"])
def test_13_6_stalled_clients_are_dropped(server, embedded_settings, tmp_path, record):
    port = free_port()
    env = {**os.environ, **settings_env(embedded_settings), **GUARD_ENV, "PYTHONUNBUFFERED": "1",
           "AMFT_API_PORT": str(port), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    if server == "production":
        command = production_command(port)
        assert "--http api.http_guard:GuardedHttpProtocol" in command[-1] and "--timeout-keep-alive" in command[-1]
    else:
        command = [sys.executable, "-m", "cli.main", "serve", "--no-workers"]
    proc = _serve(command, env, tmp_path / f"{server}.log")
    try:
        wait_port(port, 90)
        happened = check_slow_clients(port)
    finally:
        _stop(proc)
    record(f"13.6-{server}", f"against {'the production uvicorn command' if server == 'production' else '`amft serve`'}"
           f" (header timeout {HEADER_TIMEOUT} s, keep-alive {KEEP_ALIVE} s): a raw socket sends a request line and "
           "then one header line every 0.5 s, never ending the headers; another connects and sends nothing; a "
           "third stays idle after its response",
           "all three disconnected; normal requests served meanwhile", happened)


def test_13_6_h11_protocol_drops_stalled_clients(embedded_settings, record):
    from api.app import create_app
    from api.http_guard import GuardedH11Protocol, guarded_protocol

    port = free_port()
    config = uvicorn.Config(create_app(embedded_settings), host="127.0.0.1", port=port, log_level="warning",
                            timeout_keep_alive=KEEP_ALIVE, http=guarded_protocol(HEADER_TIMEOUT, GuardedH11Protocol))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, interval=0.05, what="uvicorn to start")
        happened = check_slow_clients(port)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    record("13.6-h11", "the same three slow clients against uvicorn's h11 parser with the guarded protocol",
           "all three disconnected; normal requests served meanwhile", happened)
