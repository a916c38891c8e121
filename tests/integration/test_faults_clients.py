"""Clients that vanish (a RST, no Terminate) at every stage: during the startup packet, the TLS
handshake, the SCRAM exchange, mid-query, mid-COPY in and out, mid-pipeline. Afterwards the
pooler is up, the route's only server serves the next client at once (reset and pooled, or
closed and replaced), nothing the vanished client started is committed, and the pooler's open
file descriptors return to their baseline. (Stalled logins and slowloris startups are cut off
by client_login_timeout: tests/integration/test_auth_hostile.py.)"""
from __future__ import annotations

import ssl
import struct

import pytest

from scripts.pooler import open_fds
from tests.integration.conftest import (assert_alive, backends, ensure_roles, module_pooler, odyssey_config, rule,
                                        scalar, wait_for)
from tests.integration.test_faults_backend import BIND, EXECUTE, SYNC, parse
from tests.integration.wire import Wire, message, query, startup

USER = "vanish_user"
TABLE = "t_vanish"


@pytest.fixture(scope="module")
def vp(pg, roles, tls_certs):
    ensure_roles(pg, USER)
    pg.psql(f"drop table if exists {TABLE}; create table {TABLE} (id int); grant all on {TABLE} to {USER}",
            db="db1")
    text = odyssey_config(
        rule(USER, pool="transaction", pool_size=1, pool_timeout=5000),
        rule("auth_scram", "db1", authentication="scram-sha-256", password="scramsecret"),
        listen={"tls": "allow", "tls_cert_file": tls_certs["server_crt"],
                "tls_key_file": tls_certs["server_key"], "client_login_timeout": 3000})
    yield from module_pooler(pg, text)



@pytest.fixture
def baseline(vp):
    assert scalar(vp.dsn(USER, "db1")) == 1             # the route and its one server exist
    return open_fds(vp.pid)


def _vanish(w: Wire) -> None:
    w.close(abort=True)


def _startup(vp):
    w = Wire(vp.port)
    w.send(startup(USER, "db1")[:9])
    return w


def _tls(vp):
    w = Wire(vp.port)
    w.send(struct.pack("!II", 8, 80877103))
    assert w.read_exact(1) == b"S"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # a real ClientHello (the bytes an SSL object would send), then gone
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(bio_in, bio_out)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    w.send(bio_out.read())
    return w


def _scram(vp):
    w = Wire(vp.port)
    w.send(startup("auth_scram", "db1"))
    tag, body = w.read_message()
    assert tag == b"R" and struct.unpack("!I", body[:4])[0] == 10
    data = b"n,,n=,r=abcdefghijklmnopqrstuvwx"
    w.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data))
    tag, body = w.read_message()
    assert tag == b"R" and struct.unpack("!I", body[:4])[0] == 11
    return w


def _logged_in(vp) -> Wire:
    w = Wire(vp.port)
    assert w.login(USER, "db1") is None
    return w


def _mid_query(vp, pg):
    w = _logged_in(vp)
    w.send(query(f"insert into {TABLE} select 1 from pg_sleep(20)"))
    wait_for(lambda: any(b[1] == "active" for b in backends(pg, USER)), what="the query to run")
    return w


def _mid_copy_in(vp, pg):
    w = _logged_in(vp)
    w.send(query(f"copy {TABLE} from stdin"))
    assert w.read_message()[0] == b"G"
    w.send(message(b"d", b"2\n3\n") + message(b"d", b"4\n")[:4])     # and half a CopyData
    return w


def _mid_copy_out(vp, pg):
    w = _logged_in(vp)
    w.send(query("copy (select generate_series(1, 50000000)) to stdout"))
    assert w.read_message()[0] == b"H"
    return w


def _mid_pipeline(vp, pg):
    w = _logged_in(vp)
    w.send(parse("begin") + BIND + EXECUTE + SYNC
           + parse(f"insert into {TABLE} values (5)") + BIND + EXECUTE + SYNC
           + parse("select pg_sleep(20)") + BIND + EXECUTE)              # no Sync: a batch left open
    wait_for(lambda: any(b[1] == "active" for b in backends(pg, USER)), what="the pipeline to run")
    return w


STAGES = {"startup": lambda vp, pg: _startup(vp), "tls handshake": lambda vp, pg: _tls(vp),
          "scram": lambda vp, pg: _scram(vp), "mid-query": _mid_query, "mid-copy-in": _mid_copy_in,
          "mid-copy-out": _mid_copy_out, "mid-pipeline": _mid_pipeline}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("stage", list(STAGES))
def test_client_vanishes(vp, pg, baseline, stage):
    w = STAGES[stage](vp, pg)
    _vanish(w)
    # pool_size 1 and pool_timeout 5 s: the next client is served, so the slot came back
    assert scalar(vp.dsn(USER, "db1"), f"select count(*) from {TABLE}") == 0
    wait_for(lambda: open_fds(vp.pid) <= baseline, timeout=10, what="the pooler's fds to return to baseline")
    # PostgreSQL's backend of a closed server exits on its own time: within pool_size soon
    wait_for(lambda: len(backends(pg, USER)) <= 1, timeout=10, what="no backend beyond pool_size")
    assert_alive(vp)


@pytest.mark.timeout(40)
def test_slowloris_startup_is_cut_off_by_client_login_timeout(vp, baseline):
    """A byte every 0.2 s never finishes its startup packet before client_login_timeout (3 s):
    the deadline counts from the connection, not from the last byte."""
    packet = startup(USER, "db1", application_name="slowloris-" + "x" * 40)
    w = Wire(vp.port)
    sent = 0
    try:
        for byte in packet:
            w.send(bytes([byte]))
            sent += 1
            if not w.is_open(wait=0.2):
                break
    except OSError:
        pass
    w.close()
    assert sent < len(packet), "the whole startup packet went through"
    wait_for(lambda: open_fds(vp.pid) <= baseline, timeout=10, what="the pooler's fds to return to baseline")
    assert scalar(vp.dsn(USER, "db1")) == 1
