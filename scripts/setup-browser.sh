#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser tests (tests/api/test_ui.py) and bench/ui_bench.py:
# Debian's `chromium` package, driven by Playwright through executable_path=/usr/bin/chromium.
# `playwright install` is never run: it would download its own browsers.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q chromium chromium-driver
fi
/usr/bin/chromium --version
