#!/usr/bin/env bash
# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser): install the
# package if it is missing and this user may.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
    || true
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "warning: /usr/bin/chromium is missing (apt-get install chromium); the dashboard's browser tests will be skipped" >&2
fi
