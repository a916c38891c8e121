#!/usr/bin/env bash
# Client tools the integration tests drive besides the Python drivers, from Debian's packages
# when missing: pgJDBC (libpostgresql-jdbc-java) for tests/integration/test_jdbc.py. The JDK
# itself comes with the machine image; without it that test is skipped and says so.
set -euo pipefail
if ls /usr/share/java/postgresql*.jar >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "installing the PostgreSQL JDBC driver (libpostgresql-jdbc-java)..."
$SUDO apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libpostgresql-jdbc-java >/dev/null \
  || echo "could not install libpostgresql-jdbc-java: the JDBC test will be skipped"
