#!/usr/bin/env bash
# Client tools the integration tests drive besides the Python drivers, from Debian's packages
# when missing: pgJDBC (libpostgresql-jdbc-java) for tests/integration/test_jdbc.py, and the
# OpenLDAP server (slapd) that tests/integration/test_ldap.py starts on a loopback port of its
# own. The JDK itself comes with the machine image; a test whose tool is missing is skipped and
# says so.
set -euo pipefail
missing=()
ls /usr/share/java/postgresql*.jar >/dev/null 2>&1 || missing+=(libpostgresql-jdbc-java)
[ -x /usr/sbin/slapd ] || missing+=(slapd)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "installing ${missing[*]}..."
$SUDO apt-get update -qq || true
for pkg in "${missing[@]}"; do
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
    || echo "could not install $pkg: the tests that need it will be skipped"
done
