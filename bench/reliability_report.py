"""Render bench/results/reliability.md from a run of the fault and hostile-input suites.

    AMFT_RELIABILITY_LOG=/tmp/reliability.jsonl .venv/bin/pytest tests/faults tests/security
    .venv/bin/python -m bench.reliability_report /tmp/reliability.jsonl --durations /tmp/log > bench/results/reliability.md

Each test writes one JSON line per case (tests/faults/conftest.py `record`): what was
done, what was expected, what happened (measured in that run, not written by hand).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HEADER = """# Reliability and security (issues 6 and 13)

One line per case of issue 6 (cases 1, 2, ...) and of issue 13 (cases `13.<item>`, e.g.
13.1 for its security item 1), written by the tests themselves in one run of
`tests/faults/` and `tests/security/` (see `bench/reliability_report.py`). Fault cases run
real Celery worker subprocesses (the production app, with faults injected at a known step
by `tests/faults/inject.py` and then done for real from outside) on a private PostgreSQL
cluster and Redis started by the tests. Every fault case also passes the common checker
(`tests/faults/checker.py`): the stated status; every step's metrics exactly once; no row
written by a fenced attempt; the mu curve equal to an uninterrupted run of the same spec
within 1e-6; at most `save_every` steps recomputed per resume (2 x save_every where the
latest checkpoint was corrupt).

| case | what was done | expected | what happened |
| --- | --- | --- | --- |
"""


def case_order(case: str) -> tuple:
    """Issue 6's cases (1, 2, ...) first, then issue-numbered ones ("13.1", "13.5a") in order."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", case))
    return ("." in case, numbers, case)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log", type=Path)
    parser.add_argument("--footer", type=Path, help="markdown appended after the table")
    args = parser.parse_args()
    rows = {}
    for line in args.log.read_text().splitlines():
        entry = json.loads(line)
        rows[entry["case"]] = entry  # the last run of a case wins
    out = [HEADER]
    for case in sorted(rows, key=case_order):
        e = rows[case]
        cells = [case, e["done"], e["expected"], e["happened"]]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |\n")
    if args.footer:
        out.append("\n" + args.footer.read_text())
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
