"""TLS on both sides of the pooler (reference §1.4, §7.1).

Client side: one pooler with three listen blocks — `tls "require"` on ${port}, `tls "disable"` on
${port2} and `tls "verify_ca"` on ${port3} — all with the session test certificates.
Server side: a second private PostgreSQL with `ssl = on`, and storages with `tls "require"`,
`"verify_ca"` and `"verify_full"`; plus `tls "require"` against the session PostgreSQL, which has
no SSL.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
import time

import psycopg
import psycopg.errors
import psycopg2
import psycopg2.errors
import pytest

from scripts.pgcluster import PgCluster, free_port
from scripts.pooler import PoolerProcess
from tests.integration.conftest import (assert_alive, direct, ensure_roles, module_pooler, odyssey_config,
                                        odyssey_text, rule)
from tests.integration.wire import SSL_REQUEST, Wire, request_code, login_error

USER = "tls_user"


def _listen(port: str, mode: str, certs: dict) -> str:
    return (f'listen {{\n    host "127.0.0.1"\n    port ${{{port}}}\n    tls "{mode}"\n'
            f'    tls_cert_file "{certs["server_crt"]}"\n    tls_key_file "{certs["server_key"]}"\n'
            f'    tls_ca_file "{certs["ca_crt"]}"\n}}\n')


@pytest.fixture(scope="module")
def tls_pooler(pg, roles, tls_certs):
    ensure_roles(pg, USER)
    text = odyssey_config(rule(USER, "db1"), listen=dict(
        tls="require", tls_cert_file=tls_certs["server_crt"], tls_key_file=tls_certs["server_key"],
        tls_ca_file=tls_certs["ca_crt"]))
    text += _listen("port2", "disable", tls_certs) + _listen("port3", "verify_ca", tls_certs)
    port2, port3 = free_port(), free_port()
    p = PoolerProcess(text, pg=pg, port2=port2, port3=port3)
    p.port2, p.port3 = port2, port3
    try:
        yield p
        assert_alive(p)
    finally:
        p.stop()


def _dsn(port: int, sslmode: str, **kw) -> str:
    parts = [f"host=127.0.0.1 port={port} user={USER} dbname=db1 sslmode={sslmode}",
             "sslcert=/nonexistent/client.crt sslkey=/nonexistent/client.key"]   # no ~/.postgresql cert
    parts += [f"{k}={v}" for k, v in kw.items()]
    return " ".join(parts)


def _query(con, sql: str = "select 1"):
    with con.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


# -- client side ----------------------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_require_psycopg2_uses_tls(tls_pooler):
    con = psycopg2.connect(_dsn(tls_pooler.port, "require"))
    try:
        assert con.info.ssl_in_use
        assert _query(con) == 1
    finally:
        con.close()


@pytest.mark.timeout(20)
def test_require_psycopg3_verify_full_uses_tls(tls_pooler, tls_certs):
    """verify-full against our CA: the server certificate (SAN IP:127.0.0.1) is accepted."""
    with psycopg.connect(_dsn(tls_pooler.port, "verify-full", sslrootcert=tls_certs["ca_crt"]),
                         autocommit=True) as con:
        assert con.info.pgconn.ssl_in_use
        assert con.execute("select 2").fetchone()[0] == 2


@pytest.mark.timeout(20)
def test_require_psql(tls_pooler):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-c", "select 'over tls'",
                          _dsn(tls_pooler.port, "require")],
                         capture_output=True, text=True, timeout=15)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "over tls"


@pytest.mark.timeout(20)
def test_require_refuses_plaintext(tls_pooler):
    err = login_error(tls_pooler.port, USER, "db1")
    assert err is not None and err["C"] == "08P01", err
    odyssey_text(err["M"], "SSL is required")
    with pytest.raises(psycopg2.OperationalError, match="SSL is required"):
        psycopg2.connect(_dsn(tls_pooler.port, "disable"))


@pytest.mark.timeout(20)
def test_disable_answers_n_and_prefer_falls_back(tls_pooler):
    w = Wire(tls_pooler.port2)
    try:
        w.send(request_code(SSL_REQUEST))
        assert w.read_exact(1) == b"N"
        assert w.login(USER, "db1") is None        # plaintext startup on the same connection
        rows, err, _ = w.simple_query("select 3")
        assert err is None and rows == [["3"]]
    finally:
        w.close()
    con = psycopg2.connect(_dsn(tls_pooler.port2, "prefer"))
    try:
        assert not con.info.ssl_in_use
        assert _query(con) == 1
    finally:
        con.close()
    with pytest.raises(psycopg2.OperationalError, match="(?i)server does not support SSL"):
        psycopg2.connect(_dsn(tls_pooler.port2, "require"))


@pytest.mark.timeout(20)
def test_verify_ca_needs_a_client_certificate(tls_pooler, tls_certs):
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(_dsn(tls_pooler.port3, "require"))
    con = psycopg2.connect(f"host=127.0.0.1 port={tls_pooler.port3} user={USER} dbname=db1 sslmode=require "
                           f"sslcert={tls_certs['client_crt']} sslkey={tls_certs['client_key']}")
    try:
        assert con.info.ssl_in_use
        assert _query(con) == 1
    finally:
        con.close()
    assert_alive(tls_pooler)


@pytest.mark.timeout(20)
def test_cancel_on_a_tls_connection(tls_pooler):
    """libpq's PQcancel (psycopg2) sends a plaintext CancelRequest even to a `tls "require"` port."""
    con = psycopg2.connect(_dsn(tls_pooler.port, "require"))
    con.autocommit = True
    try:
        timer = threading.Timer(0.3, con.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            _query(con, "select pg_sleep(10)")
        timer.join()
        assert time.monotonic() - t0 < 5
        assert _query(con) == 1
    finally:
        con.close()


@pytest.mark.timeout(20)
def test_verify_ca_rejects_plaintext(tls_pooler):
    err = login_error(tls_pooler.port3, USER, "db1")
    assert err is not None and err["C"] == "08P01", err
    odyssey_text(err["M"], "SSL is required")


# -- server side ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssl_pg(tls_certs):
    """A second private PostgreSQL with ssl = on and the test server certificate."""
    cluster = PgCluster()
    try:
        cluster.init()
        pw = pwd.getpwnam("postgres") if cluster.as_root else None
        for name in ("server_crt", "server_key", "ca_crt"):
            dst = os.path.join(cluster.datadir, os.path.basename(tls_certs[name]))
            shutil.copy(tls_certs[name], dst)
            os.chmod(dst, 0o600)
            if pw:
                os.chown(dst, pw.pw_uid, pw.pw_gid)
        cluster._append_as_owner(os.path.join(cluster.datadir, "postgresql.conf"),
                                 "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        cluster.start()
        cluster.psql("CREATE DATABASE db1;")
        ensure_roles(cluster, USER)
        yield cluster
    finally:
        cluster.destroy()


def _storage_pooler(pg, certs, workers: int = 1):
    st = (lambda name, mode: f'storage "{name}" {{\n    type "remote"\n    host "127.0.0.1"\n'
          f'    port ${{pg_port}}\n    tls "{mode}"\n    tls_ca_file "{certs["ca_crt"]}"\n}}\n')
    text = odyssey_config(
        rule(USER, "db1", pool="transaction", pool_size=2),
        rule(USER, "verify_ca", storage="pg_verify_ca", storage_db="db1"),
        rule(USER, "verify_full", storage="pg_verify_full", storage_db="db1"),
        storage=dict(tls="require"), workers=workers)
    return text + st("pg_verify_ca", "verify_ca") + st("pg_verify_full", "verify_full")


@pytest.fixture(scope="module")
def storage_tls_pooler(ssl_pg, tls_certs):
    yield from module_pooler(ssl_pg, _storage_pooler(ssl_pg, tls_certs))


def _backend_ssl(port: int, db: str = "db1") -> bool:
    con = psycopg2.connect(f"host=127.0.0.1 port={port} user={USER} dbname={db} sslmode=disable")
    con.autocommit = True
    try:
        return _query(con, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    finally:
        con.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("db", ["db1", "verify_ca", "verify_full"])
def test_storage_tls_backend_uses_tls(storage_tls_pooler, db):
    assert _backend_ssl(storage_tls_pooler.port, db) is True


@pytest.mark.timeout(30)
def test_storage_tls_with_two_workers(ssl_pg, tls_certs):
    """workers 2: TLS servers cannot move between machines; every client still gets a TLS backend."""
    p = PoolerProcess(_storage_pooler(ssl_pg, tls_certs, workers=2), pg=ssl_pg)
    try:
        for _ in range(4):
            assert _backend_ssl(p.port) is True
        assert_alive(p)
    finally:
        p.stop()


@pytest.mark.timeout(30)
def test_storage_tls_require_without_server_ssl(pg, roles):
    ensure_roles(pg, USER)
    p = PoolerProcess(odyssey_config(rule(USER, "db1"), storage=dict(tls="require")), pg=pg)
    try:
        w = Wire(p.port)
        try:
            err = w.login(USER, "db1")
            if err is None:                               # routing/login is lazy: the first query attaches
                _, err, _ = w.simple_query("select 1")
            assert err is not None and err["C"] == "08006", err
            odyssey_text(err["M"], "failed to connect to remote server")
        finally:
            w.close()
        assert_alive(p)
    finally:
        p.stop()


@pytest.mark.timeout(20)
def test_cancel_over_tls_psycopg3(tls_pooler):
    """libpq >= 17 (psycopg 3 cancel_safe) sends the CancelRequest inside TLS and expects a clean
    TLS close (close_notify), as PostgreSQL gives."""
    with psycopg.connect(_dsn(tls_pooler.port, "require"), autocommit=True) as con:
        errors = []

        def cancel():
            try:
                con.cancel_safe()
            except Exception as e:
                errors.append(e)
        timer = threading.Timer(0.3, cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            con.execute("select pg_sleep(10)")
        timer.join()
        assert not errors, errors



@pytest.mark.timeout(30)
def test_terminated_idle_tls_server_is_replaced_at_attach(storage_tls_pooler, ssl_pg):
    """pool_attach_check over TLS: a pooled TLS backend that PostgreSQL terminated is noticed at
    attach (through the TLS layer: session tickets alone do not count) and replaced."""
    con = psycopg2.connect(f"host=127.0.0.1 port={storage_tls_pooler.port} user={USER} dbname=db1 sslmode=disable")
    con.autocommit = True
    try:
        pid = _query(con, "select pg_backend_pid()")
        with direct(ssl_pg) as d:
            d.cursor().execute("select pg_terminate_backend(%s)", (pid,))
        time.sleep(0.3)
        assert _query(con, "select pg_backend_pid()") != pid
        assert _query(con, "select ssl from pg_stat_ssl where pid = pg_backend_pid()") is True
    finally:
        con.close()
