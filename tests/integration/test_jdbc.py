"""pgJDBC (the PostgreSQL JDBC driver) through a transaction pool with prepared statements: real
Java threads with server-side named statements (S_1, S_2, ...), batches and an explicit
transaction, more connections than servers. Needs a JDK and Debian's libpostgresql-jdbc-java
(`make test` installs the jar; the JDK comes with the machine image)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from tests.integration.conftest import direct, ensure_roles, rule

HERE = os.path.dirname(os.path.abspath(__file__))
JARS = sorted(glob.glob("/usr/share/java/postgresql-[0-9]*.jar")) or sorted(glob.glob("/usr/share/java/postgresql.jar"))


def _missing() -> str | None:
    if not shutil.which("javac") or not shutil.which("java"):
        return "no JDK (javac/java) on PATH"
    if not JARS:
        return "no pgJDBC jar in /usr/share/java (Debian package libpostgresql-jdbc-java)"
    return None


@pytest.fixture(scope="module")
def jdbc_classes(tmp_path_factory):
    why = _missing()
    if why:
        pytest.skip(why)
    out = str(tmp_path_factory.mktemp("jdbc"))
    subprocess.run(["javac", "-d", out, os.path.join(HERE, "jdbc", "PreparedThroughPool.java")],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.mark.timeout(120)
def test_jdbc_prepared_statements_through_a_small_transaction_pool(pg, odyssey, jdbc_classes):
    user = "jdbc_user"
    ensure_roles(pg, user)
    with direct(pg, "db1") as con, con.cursor() as cur:
        cur.execute(f"drop table if exists jdbc_t; create table jdbc_t (k int, i int); grant all on jdbc_t to {user}")
    p = odyssey(rule(user, pool="transaction", pool_size=2, pool_reserve_prepared_statement=True))
    run = subprocess.run(["java", "-cp", os.pathsep.join([jdbc_classes, JARS[-1]]), "PreparedThroughPool",
                          str(p.port), "db1", user, "6"], capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert run.stdout.strip() == "OK 30"
    with direct(pg, "db1") as con, con.cursor() as cur:
        cur.execute("select count(*), count(*) filter (where i >= 100) from jdbc_t")
        assert cur.fetchone() == (6 * 20, 6 * 5)
