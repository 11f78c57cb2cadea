"""Processes that die with their parent (issue 13, item 12): Linux's PR_SET_PDEATHSIG.

- `die_with_parent(sig)`: this process gets `sig` when the thread that forked it exits
  (Celery pool children call it at start: a pool child whose worker was killed stops too).
- `python -m workers.parent_death PARENT_PID SIGNAL -- COMMAND...`: sets it, then execs
  COMMAND (the setting survives exec). `amft serve` starts its workers through this, so a
  `kill -9` of `amft serve` leaves no orphan worker consuming the queues. Starting through
  a fresh interpreter avoids `preexec_fn`, which is unsafe in a process with threads.

Elsewhere than Linux this does nothing (returns False / just execs).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies. Returns whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return True


def main(argv: list[str]) -> None:
    parent, sig, separator, *command = argv
    if separator != "--" or not command:
        sys.exit("usage: python -m workers.parent_death PARENT_PID SIGNAL -- COMMAND...")
    die_with_parent(signal.Signals[sig])
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        sys.exit(f"parent {parent} is gone; not starting {command[0]}")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
