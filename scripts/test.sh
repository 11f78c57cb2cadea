#!/usr/bin/env bash
# Installs everything, starts PostgreSQL and Redis if they are down, runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
# The dashboard browser tests need Chromium from Debian (issue 18).
scripts/setup-browser.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
