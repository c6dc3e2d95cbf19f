#!/usr/bin/env bash
# Start the machine's PostgreSQL (127.0.0.1:5432, trust auth, database `test`) if it is down.
set -euo pipefail
if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && exit 0
    sleep 1
  done
fi
echo "warning: PostgreSQL is not reachable on 127.0.0.1:5432; tests that need it will be skipped" >&2
