"""`authentication "cert"` (auth_cert.py) with real clients and the session test certificates
(client certificate CN "tls_client", signed by the test CA).

One pooler, three listen blocks: `tls "verify_ca"` on ${port} (a client certificate signed by
tls_ca_file is mandatory), `tls "disable"` on ${port2} (plain TCP reaches the cert rules) and
`tls "require"` with tls_ca_file on ${port3} (TLS without a client certificate is allowed).
"""
from __future__ import annotations

import ssl

import psycopg2
import pytest

from scripts.pgcluster import free_port
from scripts.pooler import PoolerProcess
from tests.integration.conftest import assert_alive, ensure_roles, odyssey_config, odyssey_text, rule
from tests.integration.wire import SSL_REQUEST, Wire, login_error, request_code

CN = "tls_client"
OK, BAD = "cert_ok", "cert_bad"


def _listen(port: str, mode: str, certs: dict) -> str:
    return (f'listen {{\n    host "127.0.0.1"\n    port ${{{port}}}\n    tls "{mode}"\n'
            f'    tls_cert_file "{certs["server_crt"]}"\n    tls_key_file "{certs["server_key"]}"\n'
            f'    tls_ca_file "{certs["ca_crt"]}"\n}}\n')


def _cert_rule(user: str, *names: str) -> str:
    uname = "default" if user == "default" else f'"{user}"'
    lines = "".join(f"        auth_common_name {n}\n" for n in names)
    return (f"    user {uname} {{\n        authentication \"cert\"\n{lines}"
            f"        storage \"postgres_server\"\n        pool \"transaction\"\n        pool_size 0\n"
            f"        pool_timeout 10000\n    }}\n")


@pytest.fixture(scope="module")
def cert_pooler(pg, roles, tls_certs):
    ensure_roles(pg, CN, OK, BAD)
    text = odyssey_config(rule("placeholder_user", "placeholder_db"), listen=dict(
        tls="verify_ca", tls_cert_file=tls_certs["server_crt"], tls_key_file=tls_certs["server_key"],
        tls_ca_file=tls_certs["ca_crt"]))
    text += _listen("port2", "disable", tls_certs) + _listen("port3", "require", tls_certs)
    text += ('database "db1" {\n'
             + _cert_rule(OK, '"somebody_else"', '"TLS_CLIENT"')    # a list; names ignore case
             + _cert_rule(BAD, '"not_the_client"')
             + _cert_rule(CN, "default")                            # the rule's own user name
             + "}\n")
    # under `user default`, `auth_common_name default` means "default_user", whoever logs in
    text += 'database "postgres" {\n' + _cert_rule("default", "default") + "}\n"
    port2, port3 = free_port(), free_port()
    p = PoolerProcess(text, pg=pg, port2=port2, port3=port3)
    p.port2, p.port3 = port2, port3
    try:
        yield p
        assert_alive(p)
    finally:
        p.stop()


def _dsn(port: int, user: str, db: str = "db1", cert: dict | None = None) -> str:
    if cert is None:                       # no ~/.postgresql certificate either
        files = "sslcert=/nonexistent/client.crt sslkey=/nonexistent/client.key"
    else:
        files = f"sslcert={cert['client_crt']} sslkey={cert['client_key']}"
    return f"host=127.0.0.1 port={port} user={user} dbname={db} sslmode=require {files}"


def _select(dsn: str):
    con = psycopg2.connect(dsn)
    try:
        assert con.info.ssl_in_use
        with con.cursor() as cur:
            cur.execute("select current_user")
            return cur.fetchone()[0]
    finally:
        con.close()


def _refused(dsn: str) -> str:
    with pytest.raises(psycopg2.OperationalError) as e:
        psycopg2.connect(dsn)
    return str(e.value)


@pytest.mark.timeout(30)
def test_common_name_in_the_list(cert_pooler, tls_certs):
    assert _select(_dsn(cert_pooler.port, OK, cert=tls_certs)) == OK
    # the same rule on the listen that only asks for a certificate
    assert _select(_dsn(cert_pooler.port3, OK, cert=tls_certs)) == OK


@pytest.mark.timeout(30)
def test_common_name_mismatch(cert_pooler, tls_certs):
    msg = _refused(_dsn(cert_pooler.port, BAD, cert=tls_certs))
    assert "TLS certificate common name mismatch" in msg, msg
    cert_pooler.wait_log("bad common name: tls_client (expected not_the_client)")
    assert_alive(cert_pooler)


@pytest.mark.timeout(30)
def test_auth_common_name_default_is_the_rule_user(cert_pooler, tls_certs):
    assert _select(_dsn(cert_pooler.port, CN, cert=tls_certs)) == CN
    # `user default`: the rule's name is default_user, so CN tls_client does not match even for
    # a client logging in as tls_client (as C)
    msg = _refused(_dsn(cert_pooler.port, CN, db="postgres", cert=tls_certs))
    assert "TLS certificate common name mismatch" in msg, msg


@pytest.mark.timeout(30)
def test_no_client_certificate(cert_pooler, tls_certs):
    # verify_ca: the handshake itself fails
    _refused(_dsn(cert_pooler.port, OK))
    # require + tls_ca_file: TLS without a certificate reaches the rule, which refuses it
    msg = _refused(_dsn(cert_pooler.port3, OK))
    assert "TLS certificate common name mismatch" in msg, msg
    cert_pooler.wait_log("no client certificate")
    assert _select(_dsn(cert_pooler.port3, OK, cert=tls_certs)) == OK


@pytest.mark.timeout(30)
def test_plain_tcp_is_refused(cert_pooler):
    err = login_error(cert_pooler.port2, OK, "db1")
    assert err is not None and err["C"] == "28000" and err["S"] == "FATAL", err
    odyssey_text(err["M"], "TLS connection required")
    with pytest.raises(psycopg2.OperationalError, match="TLS connection required"):
        psycopg2.connect(f"host=127.0.0.1 port={cert_pooler.port2} user={CN} dbname=db1 sslmode=disable")
    assert_alive(cert_pooler)


@pytest.mark.timeout(30)
def test_mismatch_sqlstate_on_the_wire(cert_pooler, tls_certs):
    """C answers a CN mismatch with 28P01 (KIWI_INVALID_PASSWORD), FATAL; a match logs in."""
    for user, expected in ((BAD, "28P01"), (OK, None)):
        w = Wire(cert_pooler.port)
        try:
            w.send(request_code(SSL_REQUEST))
            assert w.read_exact(1) == b"S"
            ctx = ssl.create_default_context(cafile=tls_certs["ca_crt"])
            ctx.load_cert_chain(tls_certs["client_crt"], tls_certs["client_key"])
            w.sock = ctx.wrap_socket(w.sock, server_hostname="127.0.0.1")
            err = w.login(user, "db1")
            if expected is None:
                assert err is None, err
            else:
                assert err is not None and err["C"] == expected and err["S"] == "FATAL", err
                odyssey_text(err["M"], "TLS certificate common name mismatch")
        finally:
            w.close()
