"""Encode and decode from the same table (wire_table.py); each decode also fed one byte at a
time and followed by trailing bytes, which must stay unconsumed."""
from __future__ import annotations

import pytest

from kiwi.be_read import read_startup, startup_need
from kiwi.framer import Framer, message_need, read_header, read_message
from tests.kiwi.wire_table import ALL_ROWS, STARTUP_ROWS, TYPED_ROWS

TRAILING = b"Q\0\0\0\x0dSEL"   # the start of a further message


def ids(rows):
    return [r.id for r in rows]


@pytest.mark.parametrize("row", ALL_ROWS, ids=ids(ALL_ROWS))
def test_encode(row):
    assert row.build() == row.wire


@pytest.mark.parametrize("row", TYPED_ROWS, ids=ids(TYPED_ROWS))
def test_decode_typed(row):
    type_byte, payload, end = read_message(row.wire, 0, row.limits)
    assert type_byte == row.wire[0]
    assert end == len(row.wire)
    assert bytes(payload) == row.wire[5:]
    if row.decode is not None:
        assert row.decode(payload) == row.value
        assert row.decode(bytes(payload)) == row.value
    else:
        assert len(payload) == 0


@pytest.mark.parametrize("row", TYPED_ROWS, ids=ids(TYPED_ROWS))
def test_decode_typed_with_trailing_bytes(row):
    buf = bytearray(row.wire + TRAILING)
    type_byte, payload, end = read_message(buf, 0, row.limits)
    assert end == len(row.wire) and bytes(payload) == row.wire[5:]
    payload.release()
    assert read_message(buf, end, row.limits) is None
    assert message_need(buf, end, row.limits) == 14 - len(TRAILING)
    framer = Framer(row.limits)
    framer.feed(row.wire + TRAILING)
    assert framer.next() == (row.wire[0], row.wire[5:])
    assert framer.next() is None
    assert len(framer) == len(TRAILING)
    assert framer.take_all() == TRAILING


@pytest.mark.parametrize("row", TYPED_ROWS, ids=ids(TYPED_ROWS))
def test_decode_typed_byte_at_a_time(row):
    framer = Framer(row.limits)
    wire = row.wire
    for i in range(len(wire)):
        assert framer.need() == (5 - i if i < 5 else len(wire) - i)
        assert framer.next() is None
        assert read_message(wire[:i], 0, row.limits) is None
        framer.feed(wire[i:i + 1])
    assert framer.need() == 0
    messages = list(framer)
    assert messages == [(wire[0], wire[5:])]
    if row.decode is not None:
        assert row.decode(messages[0][1]) == row.value
    assert len(framer) == 0 and framer.next() is None


@pytest.mark.parametrize("row", TYPED_ROWS, ids=ids(TYPED_ROWS))
def test_raw_and_header_fast_path(row):
    assert read_header(row.wire, 0, row.limits) == (row.wire[0], len(row.wire) - 5)
    framer = Framer(row.limits)
    framer.feed(row.wire + row.wire)
    assert framer.next_raw() == row.wire
    assert framer.next_raw() == row.wire
    assert framer.next_raw() is None


@pytest.mark.parametrize("row", STARTUP_ROWS, ids=ids(STARTUP_ROWS))
def test_decode_startup(row):
    assert read_startup(row.wire) == (row.value, len(row.wire))
    assert read_startup(row.wire + TRAILING) == (row.value, len(row.wire))
    assert read_startup(bytearray(row.wire) + TRAILING) == (row.value, len(row.wire))
    assert read_startup(memoryview(TRAILING + row.wire), len(TRAILING)) == (row.value, len(row.wire))


@pytest.mark.parametrize("row", STARTUP_ROWS, ids=ids(STARTUP_ROWS))
def test_decode_startup_byte_at_a_time(row):
    wire = row.wire
    buf = bytearray()
    framer = Framer()
    for i in range(len(wire)):
        expected_need = 8 - i if i < 4 else len(wire) - i
        assert startup_need(buf) == expected_need
        assert framer.need_startup() == expected_need
        assert read_startup(buf) == (None, 0)
        assert framer.read_startup() is None
        buf += wire[i:i + 1]
        framer.feed(wire[i:i + 1])
    assert startup_need(buf) == 0
    assert read_startup(buf) == (row.value, len(wire))
    assert framer.read_startup() == row.value
    assert len(framer) == 0


def test_framer_startup_then_typed_messages():
    wire = STARTUP_ROWS[0].wire + b"Q\0\0\0\x0dSELECT 1\0X\0\0\0\x04"
    framer = Framer()
    framer.feed(wire)
    assert framer.read_startup() == STARTUP_ROWS[0].value
    assert list(framer) == [(ord("Q"), b"SELECT 1\0"), (ord("X"), b"")]


def test_framer_many_messages_compacts():
    msg = b"d\0\0\0\x08abcd"
    framer = Framer()
    got = 0
    for _ in range(20000):
        framer.feed(msg[:5])
        assert framer.next() is None
        framer.feed(msg[5:])
        assert framer.next() == (ord("d"), b"abcd")
        got += 1
    assert got == 20000 and len(framer) == 0
    assert len(framer._buf) < 1024  # consumed bytes are dropped
