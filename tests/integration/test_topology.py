"""Storage topology: multi-host storages, target_session_attrs, failover and promotion, against a
real primary and a streaming replica made by tests/integration/topology.py."""
from __future__ import annotations

import os
import re
import subprocess

import psycopg
import psycopg2
import pytest

from odyssey_gevent import storage as storage_status
from scripts.pgcluster import free_port
from tests.integration.conftest import odyssey_config, rule, wait_for
from tests.integration.topology import PgPair, remove, scratch_dir
from scripts.pooler import PoolerProcess

pytestmark = pytest.mark.timeout(120)

ROLES = ("rw_user", "ro_user", "any_user", "primary_user", "standby_user", "prefer_user")


@pytest.fixture(scope="module")
def pair():
    p = PgPair()
    try:
        yield _make_pair_into(p)
    finally:
        p.destroy()


def _make_pair_into(p: PgPair) -> PgPair:
    p.make()
    p.primary.psql("".join(f"CREATE ROLE {r} LOGIN;" for r in ROLES))
    p.wait_replayed()
    return p


def _config(hosts: str, poll_ms: int = 1000, pool_timeout: int = 10000, **globals_) -> str:
    rules = [rule(user, db="postgres", pool="transaction", target_session_attrs=tsa, pool_timeout=pool_timeout)
             for user, tsa in (("rw_user", "read-write"), ("ro_user", "read-only"),
                               ("primary_user", "primary"), ("standby_user", "standby"),
                               ("prefer_user", "prefer-standby"), ("any_user", None))]
    return odyssey_config(*rules, storage={"host": hosts, "port": 5432, "endpoints_status_poll_interval": poll_ms},
                          **globals_)


@pytest.fixture
def run_pooler():
    started = []

    def start(text: str) -> PoolerProcess:
        p = PoolerProcess(text)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def _dsn(p: PoolerProcess, user: str) -> str:
    return f"host=127.0.0.1 port={p.port} user={user} dbname=postgres sslmode=disable connect_timeout=10"


def _in_recovery(p: PoolerProcess, user: str) -> bool:
    # psycopg 3: libpq loses a FATAL that comes mid-query before the close, psycopg 3 keeps it
    with psycopg.connect(_dsn(p, user)) as con:
        return con.execute("select pg_is_in_recovery()").fetchone()[0]


def _attempt(p: PoolerProcess, user: str):
    try:
        return _in_recovery(p, user)
    except psycopg.Error as e:
        return str(e)


def _hosts(*clusters) -> str:
    return ",".join(f"127.0.0.1:{c.port}" for c in clusters)


@pytest.mark.parametrize("order", ["primary-first", "replica-first"])
def test_each_target_session_attrs_lands_on_its_node(pair, run_pooler, order):
    nodes = (pair.primary, pair.replica) if order == "primary-first" else (pair.replica, pair.primary)
    p = run_pooler(_config(_hosts(*nodes)))
    for _ in range(3):       # new client connections, so the round robin starts at each host
        assert _in_recovery(p, "rw_user") is False
        assert _in_recovery(p, "primary_user") is False
        assert _in_recovery(p, "ro_user") is True
        assert _in_recovery(p, "standby_user") is True
        assert _in_recovery(p, "prefer_user") is True
    seen = {_in_recovery(p, "any_user") for _ in range(6)}
    assert seen <= {True, False} and seen      # any: whichever host, the query works


def test_a_dead_host_is_skipped(pair, run_pooler):
    dead = free_port()
    p = run_pooler(_config(f"127.0.0.1:{dead},{_hosts(pair.primary, pair.replica)}",
                           backend_connect_timeout_ms=2000))
    for _ in range(4):
        assert _in_recovery(p, "rw_user") is False
        assert _in_recovery(p, "ro_user") is True
        assert _in_recovery(p, "any_user") in (True, False)
    assert f"failed to connect to 127.0.0.1:{dead}" in p.log()


def test_only_dead_hosts_give_a_connect_error(run_pooler):
    # the logins are tried again until pool_timeout (login_retry.py), then the error
    p = run_pooler(_config(f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}", pool_timeout=500,
                           backend_connect_timeout_ms=1000))
    with pytest.raises(psycopg.Error) as e:
        _in_recovery(p, "rw_user")
    assert "failed to connect to remote server" in str(e.value)


@pytest.mark.timeout(180)
def test_primary_stopped_then_replica_promoted(run_pooler):
    """Its own pair: read-write clients fail while only the replica is up and reach it once it is
    promoted; read-only clients keep working until then, and fail afterwards."""
    storage_status.forget_all()
    pair = PgPair()
    try:
        _make_pair_into(pair)
        p = run_pooler(_config(_hosts(pair.primary, pair.replica), poll_ms=200,
                               backend_connect_timeout_ms=2000))
        assert _in_recovery(p, "rw_user") is False
        assert _in_recovery(p, "ro_user") is True
        ro = psycopg2.connect(_dsn(p, "ro_user"))      # a client that stays connected
        ro.autocommit = True
        ro.cursor().execute("select 1")

        pair.stop_primary()
        with pytest.raises(psycopg.Error) as e:
            _in_recovery(p, "rw_user")
        assert e.value.sqlstate == "08006"
        assert "can't find suitable host for tsa 'read-write' of user postgres.rw_user" in str(e.value)
        assert _in_recovery(p, "ro_user") is True
        cur = ro.cursor()
        cur.execute("select pg_is_in_recovery()")
        assert cur.fetchone()[0] is True

        pair.promote()
        wait_for(lambda: _attempt(p, "rw_user") is False, timeout=20,
                 what="a read-write client on the promoted replica")
        with pytest.raises(psycopg.Error) as e:
            _in_recovery(p, "ro_user")
        assert "can't find suitable host for tsa 'read-only'" in str(e.value)
        ro.close()
    finally:
        pair.destroy()


# -- replication connections ------------------------------------------------------------------------
def _replication_config(pair) -> str:
    return odyssey_config(rule("postgres", db="default", pool="session"),
                          storage={"host": _hosts(pair.primary), "port": 5432})


def _bin(pair, name: str) -> str:
    return os.path.join(pair.primary.bindir, name)


def test_pg_basebackup_through_the_pooler(pair, run_pooler):
    p = run_pooler(_replication_config(pair))
    target = scratch_dir()
    try:
        out = subprocess.run([_bin(pair, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres",
                              "-D", os.path.join(target, "copy"), "-X", "stream", "-c", "fast", "--no-sync"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        copy = os.path.join(target, "copy")
        assert os.path.exists(os.path.join(copy, "PG_VERSION"))
        verify = subprocess.run([_bin(pair, "pg_verifybackup"), "-n", copy], capture_output=True, text=True,
                                timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        remove(target)
    # the pooler still serves ordinary clients, and no replication server was kept
    assert _in_recovery(p, "postgres") is False
    assert pair.primary.psql("select count(*) from pg_stat_replication where application_name = "
                             "'pg_basebackup'") == "0"


def test_pg_recvlogical_through_the_pooler(pair, run_pooler):
    p = run_pooler(_replication_config(pair))
    conninfo = f"host=127.0.0.1 port={p.port} user=postgres dbname=postgres"
    recv = [_bin(pair, "pg_recvlogical"), "-d", conninfo, "-S", "pooler_slot"]
    out = subprocess.run(recv + ["--create-slot", "-P", "test_decoding"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    try:
        pair.primary.psql("create table if not exists decoded (x int); insert into decoded values (42)")
        end = pair.primary.psql("select pg_current_wal_insert_lsn()")   # synchronous_commit is off
        out = subprocess.run(recv + ["--start", "-f", "-", "-E", end, "--no-loop"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "table public.decoded: INSERT: x[integer]:42" in out.stdout
    finally:
        pair.primary.psql("select pg_drop_replication_slot('pooler_slot')")


def test_a_bad_replication_value_is_refused(pair, run_pooler):
    p = run_pooler(_replication_config(pair))
    with pytest.raises(psycopg.Error) as e:
        psycopg.connect(f"host=127.0.0.1 port={p.port} user=postgres dbname=postgres replication=maybe")
    assert 'invalid value for parameter "replication"' in str(e.value)
    assert _in_recovery(p, "postgres") is False


# -- watchdog and catchup_timeout -------------------------------------------------------------------
# the lag query answers "the last replayed transaction was 100 s ago" on a standby, "now" elsewhere
_LAG_QUERY = ("select case when pg_is_in_recovery() then extract(epoch from now())::bigint - 100 "
              "else extract(epoch from now())::bigint end")


def _watchdog_config(pair, catchup: int) -> str:
    text = odyssey_config(rule("any_user", db="postgres", catchup_timeout=catchup),
                          storage={"host": _hosts(pair.replica, pair.primary), "port": 5432})
    watchdog = f"""
    watchdog {{
        authentication "none"
        storage_db "postgres"
        storage_user "postgres"
        pool "transaction"
        pool_routing "internal"
        watchdog_lag_query "{_LAG_QUERY}"
        watchdog_lag_interval 1
    }}
"""
    head, tail = text.split('storage "postgres_server" {\n', 1)
    return head + 'storage "postgres_server" {\n' + watchdog + tail


def test_lagging_replica_is_avoided(pair, run_pooler):
    storage_status.forget_all()
    p = run_pooler(_watchdog_config(pair, catchup=50))
    # once the watchdog has measured both hosts every new server goes to the primary
    wait_for(lambda: all(_in_recovery(p, "any_user") is False for _ in range(4)), timeout=15,
             what="new servers on the primary only")
    assert all(_in_recovery(p, "any_user") is False for _ in range(6))


def test_every_host_lagging_refuses_the_login(pair, run_pooler):
    storage_status.forget_all()
    text = _watchdog_config(pair, catchup=50).replace(_LAG_QUERY, "select extract(epoch from now())::bigint - 100")
    p = run_pooler(text)

    def refused():
        try:
            _in_recovery(p, "any_user")
            return None
        except psycopg.Error as e:
            return e
    e = wait_for(refused, timeout=15, what="the watchdog's first poll")
    # the query's ::bigint rounds, so the pooler sees 100 s give or take one
    assert re.search(r"replication lag too big \((99|100|101) seconds\), connection rejected: postgres any_user",
                     str(e)), str(e)
    assert "HINT:  wait until the replica catches up with the primary" in str(e)
    # a client asking for a looser bound in its startup options is let in
    with psycopg.connect(_dsn(p, "any_user"), options="-c odyssey_catchup_timeout=200") as con:
        assert con.execute("select 1").fetchone()[0] == 1


def test_listen_and_client_target_session_attrs_win_over_the_rule(pair, run_pooler):
    # the rule says read-write, the listen block read-only, and a client's hint read-write again
    text = _config(_hosts(pair.primary, pair.replica)).replace(
        "listen {\n", 'listen {\n    target_session_attrs "read-only"\n', 1)
    p = run_pooler(text)
    assert _in_recovery(p, "rw_user") is True
    with psycopg.connect(_dsn(p, "rw_user"), options="-c odyssey.target_session_attrs=read-write") as con:
        assert con.execute("select pg_is_in_recovery()").fetchone()[0] is False


def test_an_idle_server_on_a_host_that_starts_lagging_is_not_reused(pair, run_pooler):
    storage_status.forget_all()
    pair.primary.psql("drop table if exists lagctl; create table lagctl (lag_s int); insert into lagctl values (0)")
    pair.wait_replayed()
    query = ("select case when pg_is_in_recovery() then extract(epoch from now())::bigint - "
             "(select lag_s from lagctl) else extract(epoch from now())::bigint end")
    text = _watchdog_config(pair, catchup=50).replace(_LAG_QUERY, query).replace(
        "log_config no", "log_config no\nlog_debug yes")
    p = run_pooler(text)
    # one idle server on each host: the hints put them there
    c1 = psycopg2.connect(_dsn(p, "any_user"), options="-c odyssey.target_session_attrs=read-only")
    c2 = psycopg2.connect(_dsn(p, "any_user"), options="-c odyssey.target_session_attrs=read-write")
    try:
        for con, standby in ((c1, True), (c2, False)):
            cur = con.cursor()
            cur.execute("select pg_is_in_recovery()")
            assert cur.fetchone()[0] is standby
        c1.commit()
        c2.commit()
    finally:
        c1.close()
        c2.close()
    pair.primary.psql("update lagctl set lag_s = 100")
    lagging = re.compile(rf"replica lag time of 127.0.0.1:{pair.replica.port} is updated to (99|10\d)\.")
    wait_for(lambda: lagging.search(p.log()), timeout=15, what="the watchdog to see the replica lag")
    # two transactions at once: neither gets the idle server on the lagging replica
    c3 = psycopg2.connect(_dsn(p, "any_user"))
    c4 = psycopg2.connect(_dsn(p, "any_user"))
    try:
        seen = []
        for con in (c3, c4):
            cur = con.cursor()
            cur.execute("select pg_is_in_recovery()")
            seen.append(cur.fetchone()[0])
        assert seen == [False, False]
    finally:
        c3.close()
        c4.close()
        pair.primary.psql("drop table lagctl")


def test_leastconn_balancing_picks_the_host_with_fewest_servers(pair, run_pooler):
    storage_status.forget_all()
    text = _config(_hosts(pair.primary, pair.replica)).replace(
        'storage "postgres_server" {\n',
        'storage "postgres_server" {\n    balancing {\n        method "leastconn"\n    }\n', 1)
    p = run_pooler(text)
    held = []
    try:
        for _ in range(2):          # two servers in use on the primary
            con = psycopg2.connect(_dsn(p, "rw_user"))
            con.cursor().execute("select 1")
            held.append(con)
        seen = []
        for _ in range(2):          # then any host will do: the replica has fewer servers
            con = psycopg2.connect(_dsn(p, "any_user"))
            cur = con.cursor()
            cur.execute("select pg_is_in_recovery()")
            seen.append(cur.fetchone()[0])
            held.append(con)
        assert seen == [True, True]
    finally:
        for con in held:
            con.close()


def test_hosts_in_the_poolers_availability_zone_come_first(pair, run_pooler):
    storage_status.forget_all()
    hosts = f"127.0.0.1:{pair.primary.port}:zone_a,127.0.0.1:{pair.replica.port}:zone_b"
    p = run_pooler(_config(hosts, availability_zone="zone_b"))
    held = []
    try:
        seen = []
        for _ in range(3):       # new servers each (held in transactions), round robin or not
            con = psycopg2.connect(_dsn(p, "any_user"))
            cur = con.cursor()
            cur.execute("select pg_is_in_recovery()")
            seen.append(cur.fetchone()[0])
            held.append(con)
        assert seen == [True, True, True]
        assert _in_recovery(p, "rw_user") is False        # a host elsewhere is still used when it must
    finally:
        for con in held:
            con.close()


def test_show_notice_messages_names_the_host(pair, run_pooler):
    text = _config(_hosts(pair.primary, pair.replica)).replace(
        'storage "postgres_server" {\n',
        'storage "postgres_server" {\n    balancing {\n        method "roundrobin"\n'
        '        show_notice_messages yes\n    }\n', 1)
    p = run_pooler(text)
    with psycopg.connect(_dsn(p, "ro_user")) as con:
        notices = []
        con.add_notice_handler(lambda d: notices.append(d.message_primary))
        assert con.execute("select pg_is_in_recovery()").fetchone()[0] is True
    assert notices == [f"select host 127.0.0.1:{pair.replica.port}"]


@pytest.mark.parametrize("mode", ["database", "true"])
def test_a_replication_session_is_never_pooled(pair, run_pooler, mode):
    p = run_pooler(_replication_config(pair))

    def walsenders() -> int:
        return int(pair.primary.psql("select count(*) from pg_stat_activity where backend_type = 'walsender'"))

    before = walsenders()            # the replica's own stream
    con = psycopg.connect(f"host=127.0.0.1 port={p.port} user=postgres dbname=postgres replication={mode}",
                          autocommit=True)
    try:
        systemid = con.execute("IDENTIFY_SYSTEM").fetchone()[0]
        if isinstance(systemid, bytes):      # a physical walsender's result types are not loaded
            systemid = systemid.decode()
        assert systemid == pair.primary.psql("select system_identifier from pg_control_system()")
        assert walsenders() == before + 1
    finally:
        con.close()
    wait_for(lambda: walsenders() == before, timeout=10, what="the replication server to be closed")
    assert _in_recovery(p, "postgres") is False       # ordinary clients are served meanwhile
    assert walsenders() == before


def test_without_a_standby_prefer_standby_takes_the_primary(pair, run_pooler):
    storage_status.forget_all()
    dead = free_port()
    p = run_pooler(_config(f"127.0.0.1:{dead},{_hosts(pair.primary)}", backend_connect_timeout_ms=2000))
    assert _in_recovery(p, "prefer_user") is False
    with pytest.raises(psycopg.Error) as e:
        _in_recovery(p, "ro_user")
    assert "can't find suitable host for tsa 'read-only' of user postgres.ro_user" in str(e.value)
    assert _in_recovery(p, "prefer_user") is False       # and the pooler goes on serving
