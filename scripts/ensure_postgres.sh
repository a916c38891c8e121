#!/usr/bin/env bash
# Install the PostgreSQL server (and psql/pgbench) from Debian's packages when they are missing.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v psql >/dev/null && command -v pgbench >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "installing PostgreSQL server packages (postgresql, postgresql-contrib)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-contrib >/dev/null
# Debian starts a cluster on 5432 after installing; the demo and tests run their own clusters.
