"""prepared.py pure logic: recognising SQL PREPARE/EXECUTE/DEALLOCATE as PostgreSQL reads them,
the pool-wide registry (shared statements, bounded), and the error texts the pooler raises."""
from __future__ import annotations

import pytest

from kiwi import fe_read
from odyssey_gevent import prepared
from odyssey_gevent.prepared import Registry, already_exists, does_not_exist, parse_sql


@pytest.mark.parametrize("sql,expected", [
    ("DEALLOCATE _pg3_0", ("deallocate", "_pg3_0", "")),
    ("deallocate prepare \"S_1\";", ("deallocate", "S_1", "")),
    ("  DEALLOCATE ALL ;  ", ("deallocate", None, "")),
    ('DEALLOCATE "ALL"', ("deallocate", "ALL", "")),          # a quoted name, not the keyword
    ("DEALLOCATE Foo", ("deallocate", "foo", "")),              # unquoted names fold to lower case
    ("DEALLOCATE prepare", ("deallocate", "prepare", "")),     # a statement named prepare
    ("PREPARE q(int) AS select $1 * 2", ("prepare", "q", "(int) AS select $1 * 2")),
    ("prepare x as select 1;", ("prepare", "x", " as select 1")),
    ("EXECUTE q(21)", ("execute", "q", "(21)")),
    ("execute Q", ("execute", "q", "")),
    ("EXECUTE q(1); select 1", None),        # more than one statement: not ours to rewrite
    ("PREPARE x select 1", None),            # no AS: PostgreSQL's own syntax error
    ("EXECUTE q 1", None),
    ("select 1", None),
    ("DEALLOCATE", None),
])
def test_parse_sql(sql, expected):
    assert parse_sql(sql) == expected


def test_registry_shares_one_statement_per_text_and_counts_references():
    reg = Registry()
    body = b"select 1\0\0\0"
    a = reg.acquire(body, body)
    b = reg.acquire(body, body)
    assert a is b and a.refcount == 2 and a.name.startswith("odyssey_pstmt_")
    assert a.definition == "select 1"
    other = reg.acquire(b"select 2\0\0\0", b"select 2\0\0\0")
    assert other.name != a.name
    reg.release(a)
    assert a.refcount == 1


def test_registry_forgets_unused_statements_beyond_its_bound(monkeypatch):
    monkeypatch.setattr(prepared, "REGISTRY_MAX", 100)
    reg = Registry()
    kept = reg.acquire(b"keep\0\0\0", b"keep\0\0\0")
    for i in range(1000):
        s = reg.acquire(f"q{i}\0\0\0".encode(), f"q{i}\0\0\0".encode())
        reg.release(s)
    assert len(reg.by_key) <= 100
    assert reg.by_key[b"keep\0\0\0"] is kept        # still used by a client: never forgotten


def test_error_texts_are_postgresql_s():
    f = fe_read.read_error(already_exists("S_1")[5:])
    assert (f.severity, f.sqlstate, f.message) == ("ERROR", "42P05", 'prepared statement "S_1" already exists')
    f = fe_read.read_error(does_not_exist("x")[5:])
    assert (f.sqlstate, f.message) == ("26000", 'prepared statement "x" does not exist')
    f = fe_read.read_error(does_not_exist("")[5:])
    assert f.message == "unnamed prepared statement does not exist"
