"""Unix sockets on both sides (reference §1.3 unix_socket_dir/_mode, §1.4 listen without host,
§1.5 storage host = a socket directory, §1.8 `local`/`host` connection types).

One pooler listens on `${tmp}/.s.PGSQL.${port}` (mode 0644) and on 127.0.0.1:${port}. For
`unix_user` a `local` rule lets clients in and a `host` rule blocks them, so which rule a client
matched is visible in whether it logs in. `db "via_unix"` uses a storage whose host is the
PostgreSQL socket directory.
"""
from __future__ import annotations

import os
import stat
import subprocess

import psycopg2
import pytest

from tests.integration.conftest import Raw, ensure_roles, module_pooler, odyssey_config, odyssey_text, rule
from tests.integration.wire import login_error

USER = "unix_user"


@pytest.fixture(scope="module")
def unix_pooler(pg, roles):
    ensure_roles(pg, USER)
    text = odyssey_config(
        rule(Raw(f'"{USER}" local'), "db1"),
        rule(Raw(f'"{USER}" host'), "db1", authentication="block"),
        rule(USER, "via_unix", storage="pg_unix", storage_db="db1"),
        listen={"host": None},
        unix_socket_dir=Raw('"${tmp}"'), unix_socket_mode="0644")
    text += 'listen {\n    host "127.0.0.1"\n    port ${port}\n}\n'
    text += 'storage "pg_unix" {\n    type "remote"\n    host "${pg_sockdir}"\n    port ${pg_port}\n}\n'
    gen = module_pooler(pg, text)
    p = next(gen)
    p.socket = os.path.join(p.tmp, f".s.PGSQL.{p.port}")
    yield p
    yield from gen


@pytest.mark.timeout(20)
def test_socket_file_and_mode(unix_pooler):
    st = os.stat(unix_pooler.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o644


@pytest.mark.timeout(20)
def test_psql_over_the_unix_socket_matches_the_local_rule(unix_pooler):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", unix_pooler.tmp, "-p", str(unix_pooler.port),
                          "-U", USER, "-d", "db1", "-c", "select 'via socket'"],
                         capture_output=True, text=True, timeout=15)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "via socket"


@pytest.mark.timeout(20)
def test_tcp_matches_the_host_rule(unix_pooler):
    err = login_error(unix_pooler.port, USER, "db1")
    assert err is not None and err["C"] == "28000", err
    odyssey_text(err["M"], f"user blocked: db1 {USER}")


@pytest.mark.timeout(20)
def test_psycopg2_over_the_unix_socket(unix_pooler):
    with psycopg2.connect(host=unix_pooler.tmp, port=unix_pooler.port, user=USER, dbname="db1") as con:
        assert con.info.host == unix_pooler.tmp
        with con.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
    con.close()


@pytest.mark.timeout(20)
def test_storage_over_the_postgres_unix_socket(unix_pooler):
    for host in (unix_pooler.tmp, "127.0.0.1"):          # client side does not matter here
        con = psycopg2.connect(host=host, port=unix_pooler.port, user=USER, dbname="via_unix")
        con.autocommit = True
        try:
            with con.cursor() as cur:
                cur.execute("select inet_server_addr() is null, current_database()")
                assert cur.fetchone() == (True, "db1")
        finally:
            con.close()


@pytest.mark.timeout(20)
def test_tcp_storage_for_comparison(unix_pooler):
    con = psycopg2.connect(host=unix_pooler.tmp, port=unix_pooler.port, user=USER, dbname="db1")
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute("select host(inet_server_addr())")
            assert cur.fetchone() == ("127.0.0.1",)
    finally:
        con.close()
