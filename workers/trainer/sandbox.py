"""Run a user's python grader outside the worker's process: one sandbox process per call.

Two launchers; which one is chosen once per process (`launcher()`, AMFT_GRADER_SANDBOX):

- `bwrap` (bubblewrap, Debian package `bubblewrap`): new user, pid, network, IPC, UTS and
  mount namespaces (`--unshare-all`): no network interface but loopback, no other process
  visible; a filesystem of only /usr (read-only), the Python runtime (read-only), the
  grader file and the harness (read-only) and an empty tmpfs as /tmp (the cwd); empty
  environment; dies with the worker (`--die-with-parent`). No /etc, no artifacts, no home.
- `rlimit` (where user namespaces are not allowed): a fresh process with an empty
  environment and a temporary cwd, as user `nobody` when the worker is root, inside a new
  network namespace when `unshare --net` works. It sees the worker's filesystem as that
  user may (world-readable files such as /etc/passwd included): see the README.

Both: `python -I -S` (no site-packages, no user paths), and the harness sets rlimits on
CPU seconds, address space, process count and file size before loading user code; the
worker kills the call after AMFT_GRADER_TIMEOUT_SECONDS of wall-clock time. Any failure
raises GraderError with a one-line reason (the Scorer scores the batch 0 and records it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from service.settings import Settings, get_settings
from workers.trainer.graders import GraderError

HARNESS = Path(__file__).with_name("sandbox_harness.py")
_FILE_REF = re.compile(r"^file:([0-9a-f]{32})$")
NOBODY = 65534
MAX_OUTPUT_BYTES = 4 << 20


def grader_path(settings: Settings, file_ref: str) -> Path:
    """The uploaded grader `file:<id>` on disk, refusing anything outside the uploads folder."""
    match = _FILE_REF.match(file_ref)
    if match is None:
        raise GraderError(f"{file_ref!r} is not file:<32-hex id>")
    folder = (settings.resolved_artifacts_dir / "files").resolve()
    path = (folder / f"{match.group(1)}.py").resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise GraderError(f"grader file {file_ref} not found (upload it with POST /files?purpose=grader)")
    return path


def run_grader(file_ref: str, completions: list[str], columns: dict, settings: Settings | None = None) -> list:
    """reward(completions, **columns) from the uploaded file, in a sandbox; the raw scores."""
    settings = settings or get_settings()
    source = grader_path(settings, file_ref)
    payload = json.dumps({"completions": completions, "columns": columns}).encode()
    with tempfile.TemporaryDirectory(prefix="amft-grader-") as work:
        os.chmod(work, 0o755)
        grader = Path(work) / "grader.py"  # a private copy: the sandbox never sees the uploads folder
        harness = Path(work) / "harness.py"
        for origin, copy in ((source, grader), (HARNESS, harness)):
            shutil.copyfile(origin, copy)
            os.chmod(copy, 0o444)
        launch = launcher(settings.grader_sandbox)
        command, options = launch(grader, harness, settings)
        if os.geteuid() == 0 and launch is bwrap_command:
            # Never run user code as root, not even root mapped into a user namespace: the
            # kernel does not apply RLIMIT_NPROC to the real root user, so a fork bomb would
            # exhaust the machine's pids. As `nobody` the process-count limit holds.
            options.update(user=NOBODY, group=NOBODY, extra_groups=[])
        output = _communicate(command, options, payload, settings.grader_timeout_seconds)
    return _result(output)


def limits(settings: Settings) -> list[str]:
    """The harness's rlimit arguments: CPU seconds, address-space bytes, process count."""
    return [str(settings.grader_cpu_seconds), str(settings.grader_memory_mb << 20), str(settings.grader_max_processes)]


def sandbox_python() -> Path:
    """The interpreter inside the sandbox: the worker's own when it lives under /usr, else the
    system's /usr/bin/python3 (a user-installed Python, e.g. pyenv's under /root, is not
    readable by the unprivileged sandbox user)."""
    own = Path(sys.executable).resolve()
    if own.is_relative_to("/usr") or not Path("/usr/bin/python3").exists():
        return own
    return Path("/usr/bin/python3")


def bwrap_command(grader: Path, harness: Path, settings: Settings) -> tuple[list[str], dict]:
    """bubblewrap around `python -I -S harness grader`: see the module docstring."""
    python = sandbox_python()
    command = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
    ]
    if not python.is_relative_to("/usr"):
        prefix = python.parent.parent
        command += ["--ro-bind", str(prefix), str(prefix)]
    command += [
        "--ro-bind", str(grader), "/sandbox/grader.py", "--ro-bind", str(harness), "/sandbox/harness.py",
        "--chdir", "/tmp", "--setenv", "PATH", "/usr/bin", "--setenv", "HOME", "/tmp",
        str(python), "-I", "-S", "/sandbox/harness.py", "/sandbox/grader.py", *limits(settings),
    ]
    return command, {}


def rlimit_command(grader: Path, harness: Path, settings: Settings) -> tuple[list[str], dict]:
    """A bare process with rlimits, empty env, temp cwd, no network where `unshare --net` works."""
    command = [str(sandbox_python()), "-I", "-S", str(harness), str(grader), *limits(settings)]
    if os.geteuid() == 0:  # drop to nobody after unsharing (see run_grader on RLIMIT_NPROC and root)
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *command]
    if _unshare_net_works():
        command = ["unshare", "--net", "--", *command]
    work = str(grader.parent)
    return command, {"cwd": work, "env": {"PATH": "/usr/bin:/bin", "HOME": work}}


@lru_cache(maxsize=None)
def launcher(choice: str):
    """The launcher for this process, chosen once: bwrap when asked for or when it works."""
    if choice == "bwrap" or (choice == "auto" and _bwrap_works()):
        return bwrap_command
    return rlimit_command


def describe_launcher(choice: str) -> str:
    """'bwrap' or 'rlimit' (with or without a network namespace): for events and benchmarks."""
    if launcher(choice) is bwrap_command:
        return "bwrap"
    return "rlimit+netns" if _unshare_net_works() else "rlimit"


def _communicate(command: list[str], options: dict, payload: bytes, timeout: float) -> bytes:
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, **options,
        )
    except OSError as error:
        raise GraderError(f"could not start the grader sandbox: {error}") from None
    try:
        output, _ = process.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise GraderError(f"timed out after {timeout:g}s (wall clock)") from None
    finally:
        _kill(process)
    # A signal ends the sandbox's process directly (negative code) or, under bwrap, its child,
    # whose death bwrap passes on as 128 + the signal's number.
    number = -process.returncode if process.returncode < 0 else process.returncode - 128 if not output else 0
    if number > 0:
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        hint = " (CPU-time limit)" if name in ("SIGXCPU", "SIGKILL") else ""
        raise GraderError(f"the grader process was killed by {name}{hint}")
    return output[:MAX_OUTPUT_BYTES]


def _kill(process: subprocess.Popen) -> None:
    """Kill the sandbox's whole process group (bwrap's pid namespace takes the rest)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _result(output: bytes) -> list:
    try:
        result = json.loads(output.decode("utf-8", errors="replace") or "{}")
    except json.JSONDecodeError:
        raise GraderError("the grader process wrote no result (crashed or was killed)") from None
    if "error" in result:
        message = str(result["error"])
        if "MemoryError" in message:
            message += " (memory limit)"
        raise GraderError(message)
    if "scores" not in result:
        raise GraderError("the grader process wrote no result (crashed or was killed)")
    return result["scores"]


@lru_cache(maxsize=None)
def _bwrap_works() -> bool:
    if shutil.which("bwrap") is None:
        return False
    probe = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
             "--symlink", "usr/lib64", "/lib64", "--", "/usr/bin/true"]
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}
    return subprocess.run(probe, capture_output=True, timeout=30, **as_nobody).returncode == 0


@lru_cache(maxsize=None)
def _unshare_net_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    # As the worker's user: `unshare --net` needs root (CAP_SYS_ADMIN) without user namespaces.
    return subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, timeout=30).returncode == 0
