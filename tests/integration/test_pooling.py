"""Pool modes (session / transaction / statement), server reset, and client parameters."""
from __future__ import annotations

import psycopg2
import pytest

from tests.integration.conftest import backends, direct, ensure_roles, module_pooler, odyssey_config, one, rule
from tests.integration.wire import Wire, errors_in, query, startup


@pytest.fixture(scope="module")
def modes_pooler(pg, roles):
    text = odyssey_config(
        rule("tx1_user", pool="transaction", pool_size=1, pool_timeout=3000),
        rule("sess1_user", pool="session", pool_size=2, pool_timeout=3000),
        rule("stmt1_user", pool="statement", pool_size=1, pool_timeout=3000),
        rule("discard_user", pool="session", pool_size=1, pool_discard=True, pool_timeout=3000),
        rule("params_user", pool="transaction", pool_size=1, pool_timeout=3000),
        rule("tx_user", pool="transaction", pool_size=4),
        rule("sess_user", pool="session", pool_size=8),
    )
    yield from module_pooler(pg, text)


def connect(p, user, db="db1", **kw):
    con = psycopg2.connect(p.dsn(user, db, **kw))
    con.autocommit = True
    return con



# -- transaction pooling ------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_transaction_pool_shares_one_server(modes_pooler, pg):
    cons = [connect(modes_pooler, "tx1_user") for _ in range(3)]
    try:
        pids = [one(c, "select pg_backend_pid()") for _ in range(3) for c in cons]
        # pool_size 1: every transaction of every (still connected) client ran on the same backend,
        # so no client kept the server between its transactions
        assert len(set(pids)) == 1
        assert [b[0] for b in backends(pg, "tx1_user")] == [pids[0]]
        # and between transactions that backend is idle, not idle in transaction
        assert backends(pg, "tx1_user")[0][1] == "idle"
    finally:
        for c in cons:
            c.close()


@pytest.mark.timeout(30)
def test_transaction_pool_sequential_clients_reuse_the_server(modes_pooler):
    a = connect(modes_pooler, "tx1_user")
    pid_a = one(a, "select pg_backend_pid()")
    a.close()
    b = connect(modes_pooler, "tx1_user")
    try:
        assert one(b, "select pg_backend_pid()") == pid_a
    finally:
        b.close()


@pytest.mark.timeout(30)
def test_transaction_holds_its_server_until_commit(modes_pooler):
    a = psycopg2.connect(modes_pooler.dsn("tx1_user", "db1"))       # not autocommit: BEGIN ...
    b = connect(modes_pooler, "tx1_user")
    try:
        pid = one(a, "select pg_backend_pid()")
        assert one(a, "select pg_backend_pid()") == pid               # same tx, same server
        one(a, "select set_config('application_name', 'in_tx_a', true)")
        a.commit()
        assert one(b, "select pg_backend_pid()") == pid
        assert one(b, "show application_name") != "in_tx_a"
    finally:
        a.close()
        b.close()


# -- session pooling ----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_session_pool_keeps_the_server(modes_pooler, pg):
    a = connect(modes_pooler, "sess1_user")
    b = connect(modes_pooler, "sess1_user")
    try:
        pid_a = {one(a, "select pg_backend_pid()") for _ in range(3)}
        pid_b = {one(b, "select pg_backend_pid()") for _ in range(3)}
        assert len(pid_a) == 1 and len(pid_b) == 1 and pid_a != pid_b
        a.cursor().execute("set work_mem = '5MB'")
        assert one(a, "show work_mem") == "5MB"
        assert one(b, "show work_mem") != "5MB"
        assert len(backends(pg, "sess1_user")) == 2
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_session_pool_discard_resets_the_server(modes_pooler):
    a = connect(modes_pooler, "discard_user")
    pid = one(a, "select pg_backend_pid()")
    a.cursor().execute("set work_mem = '7MB'")
    a.cursor().execute("prepare p1 as select 1")
    assert one(a, "show work_mem") == "7MB"
    a.close()
    b = connect(modes_pooler, "discard_user")
    try:
        assert one(b, "select pg_backend_pid()") == pid                # pool_size 1: same server
        assert one(b, "show work_mem") == "4MB"                        # PostgreSQL's default
        assert one(b, "select count(*) from pg_prepared_statements") == 0
    finally:
        b.close()


# -- statement pooling ---------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_statement_pool_detaches_after_every_statement(modes_pooler, pg):
    a = connect(modes_pooler, "stmt1_user")
    b = connect(modes_pooler, "stmt1_user")
    try:
        pids = []
        for _ in range(3):
            pids.append(one(a, "select pg_backend_pid()"))
            pids.append(one(b, "select pg_backend_pid()"))
        assert len(set(pids)) == 1
        # even inside a transaction block the server goes back after the statement
        a.autocommit = False
        assert one(a, "select pg_backend_pid()") == pids[0]
        assert one(b, "select pg_backend_pid()") == pids[0]           # would wait in tx mode
        a.rollback()
        assert len(backends(pg, "stmt1_user")) == 1
    finally:
        a.close()
        b.close()


# -- parameters --------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("user", ["tx_user", "sess_user"])
def test_application_name_and_options_reach_the_server(modes_pooler, pg, user):
    con = connect(modes_pooler, user, application_name="app_" + user,
                  options="'-c statement_timeout=1234 -c lock_timeout=4321'")
    try:
        cur = con.cursor()
        cur.execute("select current_setting('application_name'), current_setting('statement_timeout'),"
                    " current_setting('lock_timeout'), pg_backend_pid()")
        app, st, lt, pid = cur.fetchone()
        assert (app, st, lt) == ("app_" + user, "1234ms", "4321ms")
        if user == "sess_user":   # session mode: the backend itself carries the name while attached
            assert any(b[0] == pid and b[2] == "app_" + user for b in backends(pg, user))
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_parameter_status_at_login(modes_pooler, pg):
    with direct(pg) as d:
        server_version = d.server_version
        direct_params = {k: d.get_parameter_status(k) for k in
                         ("server_version", "server_encoding", "integer_datetimes")}
    for user in ("tx_user", "sess_user"):
        con = connect(modes_pooler, user)
        try:
            assert con.server_version == server_version
            assert con.get_parameter_status("client_encoding") == "UTF8"
            for k, v in direct_params.items():
                assert con.get_parameter_status(k) == v, k
            for k in ("DateStyle", "TimeZone", "standard_conforming_strings", "IntervalStyle"):
                assert con.get_parameter_status(k), k
        finally:
            con.close()


@pytest.mark.timeout(30)
def test_raw_login_gets_parameters_and_backend_key(modes_pooler):
    w = Wire(modes_pooler.port)
    try:
        assert w.login("tx_user", "db1", application_name="rawapp") is None
        for k in ("server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone",
                  "integer_datetimes", "standard_conforming_strings"):
            assert k in w.params, (k, w.params)
        assert w.params.get("application_name") == "rawapp"
        assert w.key is not None
        rows, err, status = w.simple_query("select current_setting('application_name')")
        assert (rows, err, status) == ([["rawapp"]], None, "I")
        w.send(b"X\x00\x00\x00\x04")
    finally:
        w.close()


def _login_parameters(port: int, **params) -> list[tuple[str, str]]:
    """The ParameterStatus messages of one login, in the order sent."""
    w = Wire(port)
    try:
        w.send(startup("tx_user", "db1", **params))
        got = []
        while True:
            tag, body = w.read_message()
            if tag == b"S":
                k, v, _ = body.split(b"\0", 2)
                got.append((k.decode(), v.decode()))
            elif tag in (b"E", b"Z"):
                assert tag == b"Z", body
                return got
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_login_parameters_are_the_routes_with_the_clients_own_values(modes_pooler):
    """Every login gets the route's parameters once each, in the same order; where the client
    sent its own value of one (names compared case-insensitively) it gets that value instead."""
    plain = _login_parameters(modes_pooler.port)
    mine = _login_parameters(modes_pooler.port, application_name="own_app", datestyle="SQL, DMY")
    names = [k for k, _ in plain]
    assert len(set(names)) == len(names) and "DateStyle" in names and "application_name" in names
    assert [k for k, _ in mine] == names
    assert dict(mine)["application_name"] == "own_app" and dict(mine)["DateStyle"] == "SQL, DMY"
    assert {k: v for k, v in mine if k not in ("application_name", "DateStyle")} == \
        {k: v for k, v in plain if k not in ("application_name", "DateStyle")}
    # the blocks made for clients' own values are kept by those values: each client its own
    again = _login_parameters(modes_pooler.port, application_name="own_app", datestyle="SQL, DMY")
    other = _login_parameters(modes_pooler.port, application_name="other_app")
    assert again == mine
    assert dict(other)["application_name"] == "other_app" and dict(other)["DateStyle"] == dict(plain)["DateStyle"]
    assert _login_parameters(modes_pooler.port) == plain


@pytest.mark.timeout(30)
def test_maintain_params_follows_the_client_across_servers(modes_pooler):
    """pool_size 1, transaction mode: both clients take turns on one server, and each transaction
    still sees its own client's startup parameters (Odyssey replays them with SET on attach)."""
    a = connect(modes_pooler, "params_user", application_name="client_a",
                options="'-c statement_timeout=1111'")
    b = connect(modes_pooler, "params_user", application_name="client_b",
                options="'-c statement_timeout=2222'")
    q = ("select current_setting('application_name'), current_setting('statement_timeout'),"
         " pg_backend_pid()")
    try:
        seen = []
        for _ in range(3):
            for con, want in ((a, ("client_a", "1111ms")), (b, ("client_b", "2222ms"))):
                cur = con.cursor()
                cur.execute(q)
                app, st, pid = cur.fetchone()
                assert (app, st) == want
                seen.append(pid)
        assert len(set(seen)) == 1
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_a_set_reported_by_the_server_is_not_left_for_a_client_with_the_same_parameters(modes_pooler):
    """pool_size 1, transaction mode: a and b log in with the same application_name, so a server
    known to hold it fits both without a SET; a's own SET (reported by the server) changes that
    server, and b's next transaction on it still sees b's value, then a's sees a's."""
    a = connect(modes_pooler, "params_user", application_name="same_app")
    b = connect(modes_pooler, "params_user", application_name="same_app")
    q = "select current_setting('application_name'), pg_backend_pid()"
    try:
        ca, cb = a.cursor(), b.cursor()
        ca.execute(q)
        assert ca.fetchone()[0] == "same_app"
        cb.execute(q)
        assert cb.fetchone()[0] == "same_app"
        ca.execute("set application_name = 'changed_by_a'")
        cb.execute(q)
        app, pid = cb.fetchone()
        assert app == "same_app"
        ca.execute(q)
        assert ca.fetchone() == ("changed_by_a", pid)
        cb.execute(q)
        assert cb.fetchone() == ("same_app", pid)
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_client_set_in_transaction_mode_is_visible_in_its_transaction(modes_pooler):
    con = psycopg2.connect(modes_pooler.dsn("tx_user", "db1"))
    try:
        cur = con.cursor()
        cur.execute("set local work_mem = '3MB'")
        cur.execute("show work_mem")
        assert cur.fetchone()[0] == "3MB"
        con.commit()
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_custom_discard_query_does_not_hide_the_previous_clients_settings(pg, odyssey):
    """pool_discard_query may not reset settings: the next client still gets its own TimeZone."""
    ensure_roles(pg, "discardq_user")
    p = odyssey(rule("discardq_user", pool="transaction", pool_size=1, pool_discard_query="SELECT 1"))
    a = psycopg2.connect(p.dsn("discardq_user", "db1", options="'-c TimeZone=Asia/Tokyo'"))
    a.autocommit = True
    a.cursor().execute("select 1")
    a.close()
    b = psycopg2.connect(p.dsn("discardq_user", "db1", options="'-c TimeZone=Etc/UTC'"))
    b.autocommit = True
    cur = b.cursor()
    cur.execute("show timezone")
    assert cur.fetchone()[0] == "Etc/UTC"
    b.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("reset", [{"pool_discard": True}, {"pool_discard_query": "RESET ALL"}])
def test_a_reset_in_transaction_mode_is_followed_by_the_clients_parameters_again(pg, odyssey, reset):
    """DISCARD ALL (or a RESET ALL pool_discard_query) after every transaction puts
    application_name back to the pooler's login value: each next transaction of the client, on
    the same server, must get the client's value set again."""
    ensure_roles(pg, "txreset_user")
    p = odyssey(rule("txreset_user", pool="transaction", pool_size=1, **reset))
    con = psycopg2.connect(p.dsn("txreset_user", "db1", application_name="my_app"))
    con.autocommit = True
    try:
        pids = set()
        for _ in range(3):
            assert one(con, "select current_setting('application_name')") == "my_app"
            pids.add(one(con, "select pg_backend_pid()"))
        assert len(pids) == 1
    finally:
        con.close()


@pytest.mark.timeout(30)
def test_an_invalid_startup_parameter_is_refused_with_postgres_error(pg, odyssey):
    ensure_roles(pg, "badparam_user")
    p = odyssey(rule("badparam_user", pool="transaction"))
    w = Wire(p.port)
    try:
        assert w.login("badparam_user", "db1", DateStyle="bogus", TimeZone="Asia/Tokyo") is None
        w.send(query("select 1"))
        fields = errors_in(w.read_until_closed(5))[0]
    finally:
        w.close()
    assert (fields["S"], fields["C"]) == ("FATAL", "22023")
    assert "DateStyle" in fields["M"]
