"""Integration fixtures: Odyssey config texts, extra roles in the private PostgreSQL, and poolers.

Config texts are Odyssey's own format (see the reference §1) built by `odyssey_config()` from
`rule()`s; `${port}`, `${pg_host}`, `${pg_port}` are filled in by scripts/pooler.py.

Every route gets its own PostgreSQL role (all trusted by pg_hba), so a test can count its
backends in pg_stat_activity by user name without seeing other tests' servers.
"""
from __future__ import annotations

import contextlib
import re
import time

import psycopg2
import pytest

from scripts.pooler import PoolerProcess

# Roles made in the session PostgreSQL for the integration tests (pg_hba trusts them over TCP).
TEST_ROLES = [
    "tx_user", "sess_user", "stmt_user", "tx1_user", "sess1_user", "stmt1_user",
    "size_user", "timeout_user", "discard_user", "params_user", "cancel_tx_user", "cancel_sess_user",
    "leave_user", "kill_user", "idle_user", "idle_tx_user", "limit_user", "async_tx_user",
    "auth_none", "auth_clear", "auth_md5", "auth_md5h", "auth_scram", "auth_block",
]

LOG_FORMAT = r"%p %t %l [%i %s] (%c) %m\n"


# -- config text ---------------------------------------------------------------------------------
class Raw(str):
    """Written into the config verbatim (template placeholders such as ${port})."""


def _value(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    return '"' + s.replace('"', '\\"').replace("$", "$$") + '"'


def _items(items: dict, indent: str) -> str:
    lines = []
    for k, v in items.items():
        if v is None:
            continue
        if isinstance(v, dict):            # sub-block such as options { "k" "v" }
            inner = " ".join(f"{_value(a)} {_value(b)}" for a, b in v.items())
            lines.append(f"{indent}{k} {{ {inner} }}")
        else:
            lines.append(f"{indent}{k} {_value(v)}")
    return "\n".join(lines)


def rule(user: str = "default", db: str = "default", pool: str = "transaction", **items) -> tuple:
    """One `database X { user Y { ... } }` rule. Defaults: auth none, our storage, pool_size 0
    (unlimited), pool_timeout 10 s (a pooler bug shows up as an error, not a hang), no reset, no
    prepared-statement emulation. Pass any other Odyssey route keyword as a keyword argument."""
    body = dict(authentication="none", storage="postgres_server", pool=pool, pool_size=0,
                pool_timeout=10000, pool_discard=False, pool_reserve_prepared_statement=False)
    body.update(items)
    return db, user, body


def odyssey_config(*rules: tuple, listen: dict | None = None, storage: dict | None = None,
                   **globals_) -> str:
    """A whole Odyssey config text. `listen`/`storage` add keywords to those blocks, the keyword
    arguments add global keywords (e.g. client_max=2)."""
    g = dict(workers=1, log_format=LOG_FORMAT, log_to_stdout=True, log_session=True,
             log_config=False, log_stats=False)
    g.update(globals_)
    out = []
    for k, v in g.items():
        if k == "log_format":
            out.append(f'log_format "{v}"')          # keep the literal \n escape, no $$ games
        else:
            out.append(_items({k: v}, ""))
    lst = {"host": "127.0.0.1", "port": Raw("${port}")}
    lst.update(listen or {})
    out.append("listen {\n" + _items(lst, "    ") + "\n}")
    st = {"type": "remote", "host": Raw('"${pg_host}"'), "port": Raw("${pg_port}")}
    st.update(storage or {})
    out.append('storage "postgres_server" {\n' + _items(st, "    ") + "\n}")
    by_db: dict[str, list] = {}
    for db, user, body in rules:
        by_db.setdefault(db, []).append((user, body))
    for db, users in by_db.items():
        dbname = "default" if db == "default" else _value(db)
        block = [f"database {dbname} {{"]
        for user, body in users:
            uname = "default" if user == "default" else _value(user)
            block.append(f"    user {uname} {{\n" + _items(body, "        ") + "\n    }")
        block.append("}")
        out.append("\n".join(block))
    return "\n".join(out) + "\n"


# -- direct PostgreSQL helpers --------------------------------------------------------------------
@contextlib.contextmanager
def direct(pg, db: str = "postgres"):
    """An autocommit superuser connection straight to PostgreSQL (not through the pooler)."""
    con = psycopg2.connect(pg.dsn("postgres", db))
    con.autocommit = True
    try:
        yield con
    finally:
        con.close()


def scalar(dsn: str, sql: str = "select 1"):
    """The one value `sql` returns on a new psycopg2 connection to `dsn` (closed afterwards)."""
    con = psycopg2.connect(dsn)
    try:
        cur = con.cursor()
        cur.execute(sql)
        return cur.fetchone()[0]
    finally:
        con.close()


def one(con, sql: str = "select 1", args=None):
    """The first value `sql` returns on an open connection (None for a statement without rows)."""
    with con.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0] if cur.description else None


def current_user(dsn: str) -> str:
    return scalar(dsn, "select current_user")


def backends(pg, user: str) -> list[tuple]:
    """(pid, state, application_name) of the client backends PostgreSQL runs for `user`."""
    with direct(pg) as con, con.cursor() as cur:
        cur.execute("select pid, state, application_name from pg_stat_activity "
                    "where usename = %s and backend_type = 'client backend' order by pid", (user,))
        return cur.fetchall()


def console_rows(p: PoolerProcess, command: str) -> list[dict]:
    """A console SHOW command's rows as dicts by column name (as admin/console)."""
    con = psycopg2.connect(p.dsn("admin", "console"))
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(command)
            names = [d.name for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def console_client_ids(p: PoolerProcess, user: str) -> list[str]:
    """The ids SHOW CLIENTS lists for `user`."""
    return [r["id"] for r in console_rows(p, "SHOW CLIENTS") if r["user"] == user]


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def odyssey_text(message: str, text: str) -> None:
    """An error made by the pooler: `odyssey: c<12hex>: ` prefix, then the reference text."""
    assert re.match(r"^odyssey: c[0-9a-f]{12}: ", message), f"no odyssey prefix in {message!r}"
    assert text in message, f"{text!r} not in {message!r}"


def assert_alive(p: PoolerProcess) -> None:
    assert p.proc.poll() is None, f"the pooler exited with {p.proc.returncode}:\n{p.log()[-4000:]}"


def start_pooler(pg, text: str, **kw) -> PoolerProcess:
    return PoolerProcess(text, pg=pg, **kw)


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def roles(pg):
    """The TEST_ROLES in the session PostgreSQL, with rights on db1 and postgres."""
    existing = set(pg.psql("select rolname from pg_roles").split())
    for role in TEST_ROLES:
        if role not in existing:
            pg.psql(f"CREATE ROLE {role} LOGIN;")
    grants = "".join(f"GRANT ALL ON DATABASE db1 TO {r}; GRANT ALL ON DATABASE postgres TO {r};"
                     f"GRANT ALL ON SCHEMA public TO {r};" for r in TEST_ROLES)
    pg.psql(grants)
    pg.psql("".join(f"GRANT ALL ON SCHEMA public TO {r};" for r in TEST_ROLES), db="db1")
    return TEST_ROLES


@pytest.fixture
def odyssey(pg, roles, pooler):
    """Function-scoped factory: odyssey(*rules, **config_kw) -> a started pooler on that config
    (`extra`: config text appended, e.g. a storage block). At teardown it checks the pooler is
    still alive (pass expect_alive=False to skip that)."""
    started = []

    def start(*rules, expect_alive: bool = True, extra: str = "", **config_kw):
        p = pooler(odyssey_config(*rules, **config_kw) + extra)
        started.append((p, expect_alive))
        return p

    yield start
    for p, expect_alive in started:
        if expect_alive:
            assert_alive(p)


def module_pooler(pg, text: str):
    """Generator body for module-scoped pooler fixtures: start, yield, check alive, stop."""
    p = start_pooler(pg, text)
    try:
        yield p
        assert_alive(p)
    finally:
        p.stop()


# -- helpers for the TLS / unix socket / process / console tests -----------------------------------
def ensure_roles(pg, *names: str, db: str = "db1") -> None:
    """Create LOGIN roles (trusted by pg_hba) with rights on `db` and postgres, if missing."""
    existing = set(pg.psql("select rolname from pg_roles").split())
    for role in names:
        if role not in existing:
            pg.psql(f"CREATE ROLE {role} LOGIN;")
    pg.psql("".join(f"GRANT ALL ON DATABASE {db} TO {r}; GRANT ALL ON DATABASE postgres TO {r};" for r in names))
    pg.psql("".join(f"GRANT ALL ON SCHEMA public TO {r};" for r in names), db=db)


def role_with_table(pg, user: str, table: str) -> str:
    """ensure_roles(user) and a fresh `table (v text)` in db1 that the role may write; returns user."""
    ensure_roles(pg, user)
    pg.psql(f"drop table if exists {table}; create table {table} (v text); grant all on {table} to {user};",
            db="db1")
    return user


def make_certs(directory: str) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (CN
    tls_client), all signed by the CA, made with the openssl CLI. Returns {name: path} for
    ca_crt, ca_key, server_crt, server_key, client_crt, client_key (keys are mode 0600)."""
    import os
    import subprocess

    p = {n: os.path.join(directory, n.replace("_", ".")) for n in
         ("ca_crt", "ca_key", "server_crt", "server_key", "client_crt", "client_key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=odyssey-gevent test CA",
        "-keyout", p["ca_key"], "-out", p["ca_crt"])
    for who, cn, ext in (("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                         ("client", "tls_client", "extendedKeyUsage=clientAuth")):
        csr = os.path.join(directory, f"{who}.csr")
        extfile = os.path.join(directory, f"{who}.ext")
        with open(extfile, "w") as f:
            f.write(ext + "\n")
        run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", p[f"{who}_key"], "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", p["ca_crt"], "-CAkey", p["ca_key"], "-CAcreateserial",
            "-days", "2", "-extfile", extfile, "-out", p[f"{who}_crt"])
    for n in ("ca_key", "server_key", "client_key"):
        os.chmod(p[n], 0o600)
    return p


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory):
    """make_certs() in a session temp dir (readable by the pooler, which runs as us)."""
    return make_certs(str(tmp_path_factory.mktemp("tls-certs")))
