"""The startup packet's parameter list has a fast reader (one decode, one split) for the common
well-formed packet; whatever it declines goes to the cursor reader. Both must agree on every
packet: the same dict, or the same ProtocolError."""
from __future__ import annotations

import random
import struct

import pytest

from kiwi.be_read import _params_fast, _read_params, _read_params_cursor, read_startup, startup_length
from kiwi.header import PROTOCOL_3_0
from kiwi._cursor import Cursor
from kiwi.errors import ProtocolError


def _outcome(reader, body: bytes):
    try:
        return "ok", reader(Cursor(body, "startup packet"))
    except ProtocolError as e:
        return "error", str(e)


BODIES = [
    b"user\0u\0database\0d\0\0",
    b"\0",                                  # no parameters at all
    b"user\0\0\0",                          # an empty value
    b"a\0b\0a\0c\0\0",                      # a duplicated name: the last value wins
    "user\0\u00e9t\u00e9\0\0".encode(),     # UTF-8 beyond ASCII
    b"user\0u\0\0x",                        # bytes after the terminator
    b"user\0u\0\0\0",
    b"\0\0",
    b"user\0u\0",                           # no terminator
    b"user\0u",                             # no NUL at the end at all
    b"user\0",                              # a name without a value
    b"\xff\0a\0\0",                         # invalid UTF-8 in a name
    b"user\0\xc3\0\0",                      # a truncated UTF-8 sequence in a value
    b"",
]


@pytest.mark.parametrize("body", BODIES)
def test_fast_and_cursor_readers_agree(body):
    assert _outcome(_read_params, body) == _outcome(_read_params_cursor, body)


def test_fast_reader_takes_the_common_packet():
    assert _params_fast(b"user\0u\0database\0d\0application_name\0pgbench\0\0") == \
        {"user": "u", "database": "d", "application_name": "pgbench"}


def test_fast_and_cursor_readers_agree_on_random_packets():
    rnd = random.Random(10)
    alphabet = [b"\0", b"a", b"b", b"\xc3\xa9", b"\xff", b"\xc3"]
    for _ in range(5000):
        body = b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 10)))
        assert _outcome(_read_params, body) == _outcome(_read_params_cursor, body), body


def _packet_outcome(buf):
    try:
        return "ok", read_startup(buf)
    except ProtocolError as e:
        return "error", str(e)


@pytest.mark.parametrize("body", BODIES)
def test_a_whole_3_0_packet_reads_the_same_both_ways(body):
    """read_startup takes a 3.0 StartupMessage in bytes without the cursor; a bytearray goes the
    general way: the same message (or error) and the same length consumed, also with bytes after
    the packet."""
    packet = struct.pack("!II", 8 + len(body), PROTOCOL_3_0) + body
    for tail in (b"", b"Q\0\0\0\4"):
        assert _packet_outcome(packet + tail) == _packet_outcome(bytearray(packet + tail))
    assert _packet_outcome(packet)[0] == _outcome(_read_params_cursor, body)[0]


@pytest.mark.parametrize("body", BODIES)
def test_a_length_word_checked_first_reads_the_same(body):
    """startup_length then read_startup(declared=...) (the pooler checks the length word before
    it reads the body) is read_startup alone."""
    packet = struct.pack("!II", 8 + len(body), PROTOCOL_3_0) + body
    assert startup_length(packet[:3]) is None
    declared = startup_length(packet[:4])
    assert declared == 8 + len(body)
    try:
        expected = ("ok", read_startup(packet))
    except ProtocolError as e:
        expected = ("error", str(e))
    try:
        got = ("ok", read_startup(packet, declared=declared))
    except ProtocolError as e:
        got = ("error", str(e))
    assert got == expected


def test_a_bad_length_word_is_refused_before_the_body():
    with pytest.raises(ProtocolError):
        startup_length(struct.pack("!I", 4))
    with pytest.raises(ProtocolError):
        startup_length(struct.pack("!I", 10005))


def test_a_startup_message_keeps_the_value_api():
    """StartupMessage (a tuple subclass, cheaper to make than the frozen dataclass it was) keeps
    that API: its fields by name, immutable, equal by all three, hashed by the version only,
    never equal to a plain tuple, the user and database properties, a readable repr; the fast
    3.0 reader and the general one make equal messages."""
    from kiwi.be_read import StartupMessage

    msg = StartupMessage(3, 0, {"user": "u"})
    assert (msg.major, msg.minor, msg.params) == (3, 0, {"user": "u"})
    assert msg.user == "u" and msg.database == "u"
    assert StartupMessage(3, 0, {"user": "u", "database": "d"}).database == "d"
    assert StartupMessage(2, 0).params == {}
    with pytest.raises(AttributeError):
        msg.major = 2
    assert msg == StartupMessage(3, 0, {"user": "u"}) and not msg != StartupMessage(3, 0, {"user": "u"})
    assert msg != StartupMessage(3, 0, {"user": "v"}) and msg != StartupMessage(3, 1, {"user": "u"})
    assert msg != (3, 0, {"user": "u"})
    assert hash(msg) == hash(StartupMessage(3, 0, {"user": "v"}))
    assert repr(msg) == "StartupMessage(major=3, minor=0, params={'user': 'u'})"
    packet = struct.pack("!II", 8 + 8, PROTOCOL_3_0) + b"user\0u\0\0"
    fast, general = read_startup(packet)[0], read_startup(bytearray(packet))[0]
    assert fast.__class__ is general.__class__ is StartupMessage and fast == general == msg


def test_the_fast_reader_keeps_its_result_by_the_bytes():
    """A 3.0 packet's parameter list read the fast way is kept by its bytes: the same packet
    again gives an equal dict of its own (a change to one message's params reaches neither the
    next message nor the kept dict); a list over the size bound is read but not kept."""
    from kiwi import be_read

    body = b"user\0kept\0database\0d\0\0"
    packet = struct.pack("!II", 8 + len(body), PROTOCOL_3_0) + body
    first = read_startup(packet)[0]
    assert be_read._PARAMS[body] == {"user": "kept", "database": "d"}
    first.params["user"] = "changed"
    second = read_startup(packet)[0]
    assert second.params == {"user": "kept", "database": "d"} and second.params is not first.params
    big = b"user\0u\0application_name\0" + b"a" * be_read._PARAMS_BODY_MAX + b"\0\0"
    msg = read_startup(struct.pack("!II", 8 + len(big), PROTOCOL_3_0) + big)[0]
    assert msg.params["user"] == "u" and big not in be_read._PARAMS
