#!/usr/bin/env bash
# Installs everything, starts PostgreSQL and Redis if they are down, runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
# The dashboard browser tests need Chromium from Debian (issue 18).
scripts/setup-browser.sh
# Three xdist workers, one test file each at a time (module fixtures stay in one process):
# most tests wait on worker subprocesses, so this fits 2 cores (the whole suite: ~20 min of pytest when quiet, ~32 busy).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile "$@"
