"""Length limits checked from the header alone, and malformed packets/payloads that each
reader must turn into ProtocolError."""
from __future__ import annotations

import struct

import pytest

from kiwi import be_read, be_write as bw, error_codes, fe_read, fe_write as fw
from kiwi.be_read import MAX_STARTUP_PACKET_LENGTH, StartupMessage, read_startup, startup_need
from kiwi.errors import KiwiError, ProtocolError
from kiwi.framer import (BE_LIMITS, DEFAULT_LIMITS, FE_LIMITS, MAX_AUTH_MESSAGE,
                         MAX_LARGE_MESSAGE, MAX_SMALL_MESSAGE, Framer, be_limits, fe_limits,
                         message_need, read_header, read_message)
from kiwi.header import BE, FE


def startup_packet(body: bytes) -> bytes:
    return struct.pack("!I", len(body) + 4) + body


V3 = b"\0\x03\0\0"


# --- the untyped first packet -------------------------------------------------------------

@pytest.mark.parametrize("declared", [0, 1, 4, 7, MAX_STARTUP_PACKET_LENGTH + 5, 0x7FFFFFFF,
                                      0xFFFFFFFF])
def test_startup_bad_length_rejected_from_length_word(declared):
    head = struct.pack("!I", declared)
    with pytest.raises(ProtocolError) as exc:
        read_startup(head)
    assert exc.value.sqlstate == error_codes.PROTOCOL_VIOLATION
    assert exc.value.side == "client"
    with pytest.raises(ProtocolError):
        startup_need(head)
    framer = Framer()
    framer.feed(head)
    with pytest.raises(ProtocolError):
        framer.read_startup()


def test_startup_largest_allowed():
    # PostgreSQL: the packet minus its length word may be MAX_STARTUP_PACKET_LENGTH bytes
    value = "x" * (MAX_STARTUP_PACKET_LENGTH - 4 - len("user\0\0\0"))
    wire = fw.startup_message({"user": value})
    assert len(wire) == 4 + MAX_STARTUP_PACKET_LENGTH
    assert read_startup(wire)[0] == StartupMessage(3, 0, {"user": value})
    with pytest.raises(ProtocolError):
        read_startup(fw.startup_message({"user": value + "x"}))


@pytest.mark.parametrize("body, why", [
    (V3, "no terminator at all"),
    (V3 + b"user\0u\0", "missing final terminator"),
    (V3 + b"user\0u", "value not terminated"),
    (V3 + b"user\0", "odd list: name without value"),
    (V3 + b"user\0u\0database\0", "odd list before end"),
    (V3 + b"user\0u\0\0junk\0", "bytes after the terminator"),
    (V3 + b"user\0\xff\xfe\0\0", "non-UTF-8 value"),
    (V3 + b"\xc3(\0u\0\0", "non-UTF-8 name"),
    (b"\x04\xd2\x16\x2f\0", "SSLRequest with extra bytes"),
    (b"\x04\xd2\x16\x30\0\0\0\0", "GSSENCRequest with extra bytes"),
    (b"\x04\xd2\x16\x2e\0\0\0\x01", "CancelRequest too short"),
    (b"\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02\0", "CancelRequest too long"),
])
def test_startup_malformed(body, why):
    with pytest.raises(ProtocolError):
        read_startup(startup_packet(body))


def test_startup_other_protocol_versions_are_reported_not_parsed():
    msg, used = read_startup(startup_packet(b"\0\x02\0\0" + b"\0" * 64))
    assert msg == StartupMessage(2, 0, {}) and used == 72
    msg, _ = read_startup(startup_packet(b"\x04\xd2\x16\x31"))   # 1234.5681: unknown code
    assert msg == StartupMessage(1234, 5681, {})


def test_startup_params_order_duplicates_and_defaults():
    msg, _ = read_startup(startup_packet(V3 + b"user\0a\0user\0b\0application_name\0\0\0"))
    assert msg.params == {"user": "b", "application_name": ""}
    assert msg.user == "b" and msg.database == "b"
    msg, _ = read_startup(fw.startup_message({"user": "u", "database": "db"}))
    assert msg.database == "db"
    msg, _ = read_startup(startup_packet(V3 + b"\0"))
    assert msg.params == {} and msg.user is None


def test_bytes_after_ssl_request_are_left_for_the_caller():
    # CVE-2021-23214: the caller must see the extra bytes and abort
    framer = Framer()
    framer.feed(fw.ssl_request() + b"\x16\x03\x01")
    assert framer.read_startup() == be_read.SSLRequest()
    assert len(framer) == 3


# --- typed message headers -----------------------------------------------------------------

def header(t: int, declared: int) -> bytes:
    return struct.pack("!BI", t, declared)


@pytest.mark.parametrize("declared", [0, 1, 2, 3])
def test_declared_length_below_4(declared):
    for limits in (FE_LIMITS, BE_LIMITS, DEFAULT_LIMITS):
        with pytest.raises(ProtocolError):
            read_message(header(ord("Q"), declared), 0, limits)


@pytest.mark.parametrize("t", [0x00, 0x01, 0x1F])
def test_control_type_bytes_rejected(t):
    with pytest.raises(ProtocolError):
        read_header(header(t, 4))


FE_SMALL = [FE.SYNC, FE.TERMINATE, FE.FLUSH, FE.DESCRIBE, FE.CLOSE, FE.EXECUTE, FE.COPY_DONE]
FE_LARGE = [FE.QUERY, FE.PARSE, FE.BIND, FE.FUNCTION_CALL, FE.COPY_DATA]


def test_frontend_limits_by_type():
    for t in FE_SMALL:
        assert FE_LIMITS[t] == MAX_SMALL_MESSAGE
    for t in FE_LARGE:
        assert FE_LIMITS[t] == MAX_LARGE_MESSAGE
    assert FE_LIMITS[FE.PASSWORD_MESSAGE] == MAX_AUTH_MESSAGE
    assert FE_LIMITS.side == "client" and BE_LIMITS.side == "server"
    assert BE_LIMITS[BE.READY_FOR_QUERY] < 1000 and BE_LIMITS[BE.BACKEND_KEY_DATA] < 1000
    assert BE_LIMITS[BE.AUTHENTICATION] == MAX_AUTH_MESSAGE
    assert BE_LIMITS[BE.DATA_ROW] == MAX_LARGE_MESSAGE


@pytest.mark.parametrize("limits", [FE_LIMITS, BE_LIMITS, DEFAULT_LIMITS],
                         ids=["fe", "be", "default"])
def test_every_type_over_its_limit_fails_on_the_header(limits):
    for t in range(0x20, 256):
        too_long = limits[t] + 5
        if too_long > 0xFFFFFFFF:
            continue
        buf = header(t, too_long)
        with pytest.raises(ProtocolError) as exc:
            read_message(buf, 0, limits)
        assert exc.value.side == limits.side
        framer = Framer(limits)
        framer.feed(buf)
        with pytest.raises(ProtocolError):
            framer.need()
        with pytest.raises(ProtocolError):
            framer.next()
        # exactly at the limit: a whole message is awaited, not an error
        assert message_need(header(t, limits[t] + 4), 0, limits) == limits[t]


def test_configurable_limits():
    small = fe_limits(large=100, small=10, auth=20)
    read_header(header(ord("Q"), 104), 0, small)
    with pytest.raises(ProtocolError):
        read_header(header(ord("Q"), 105), 0, small)
    with pytest.raises(ProtocolError):
        read_header(header(ord("S"), 15), 0, small)
    with pytest.raises(ProtocolError):
        read_header(header(ord("p"), 25), 0, small)
    with pytest.raises(ProtocolError):
        read_header(header(ord("D"), 105), 0, be_limits(large=100))


def test_read_message_offset():
    buf = bytearray(fw.sync() + fw.query("x"))
    t, payload, end = read_message(buf, 5, FE_LIMITS)
    assert t == FE.QUERY and bytes(payload) == b"x\0" and end == len(buf)


# --- payload readers ----------------------------------------------------------------------

MALFORMED = [
    (be_read.read_password, b"", "empty"),
    (be_read.read_password, b"secret", "no terminator"),
    (be_read.read_password, b"sec\0ret\0", "NUL inside"),
    (be_read.read_sasl_initial_response, b"SCRAM-SHA-256", "no terminator"),
    (be_read.read_sasl_initial_response, b"SCRAM-SHA-256\0\0\0", "short length"),
    (be_read.read_sasl_initial_response, b"SCRAM-SHA-256\0\0\0\0\x05abc", "short data"),
    (be_read.read_sasl_initial_response, b"SCRAM-SHA-256\0\0\0\0\x01abc", "long data"),
    (be_read.read_sasl_initial_response, b"SCRAM-SHA-256\0\xff\xff\xff\xfe", "length -2"),
    (be_read.read_sasl_initial_response, b"\xff\0\0\0\0\0", "non-UTF-8 mechanism"),
    (be_read.read_query, b"SELECT 1", "no terminator"),
    (be_read.read_query, b"SELECT 1\0;\0", "trailing bytes"),
    (be_read.read_parse, b"s\0q\0\0\x02\0\0\0\x17", "fewer oids than counted"),
    (be_read.read_parse, b"s\0q\0\xff\xff", "negative count"),
    (be_read.read_parse, b"s\0q\0", "no count"),
    (be_read.read_bind, b"\0\0\0\0\0\x01\0\0\0\x05ab\0\0", "short parameter"),
    (be_read.read_bind, b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", "length -2"),
    (be_read.read_bind, b"\0\0\0\0\0\0\0\0\0", "trailing byte"),
    (be_read.read_describe, b"Xname\0", "bad kind"),
    (be_read.read_describe, b"", "empty"),
    (be_read.read_close, b"S", "no name"),
    (be_read.read_execute, b"\0\0\0", "short max_rows"),
    (fe_read.read_error, b"SERROR\0", "no final terminator"),
    (fe_read.read_error, b"SERROR", "field not terminated"),
    (fe_read.read_error, b"", "empty"),
    (fe_read.read_parameter_status, b"a\0", "no value"),
    (fe_read.read_parameter_status, b"a\0b\0c", "trailing"),
    (fe_read.read_backend_key_data, b"\0\0\0\x01", "short"),
    (fe_read.read_backend_key_data, b"\0" * 9, "long"),
    (fe_read.read_ready_for_query, b"", "empty"),
    (fe_read.read_ready_for_query, b"X", "bad status"),
    (fe_read.read_ready_for_query, b"II", "long"),
    (fe_read.read_authentication, b"\0\0\0", "short code"),
    (fe_read.read_authentication, b"\0\0\0\0x", "ok with data"),
    (fe_read.read_authentication, b"\0\0\0\x05\x01\x02\x03", "short md5 salt"),
    (fe_read.read_authentication, b"\0\0\0\x0aSCRAM-SHA-256\0", "unterminated SASL list"),
    (fe_read.read_authentication, b"\0\0\0\x0a\xff\0\0", "non-UTF-8 mechanism"),
    (fe_read.read_command_complete, b"SELECT 1", "no terminator"),
    (fe_read.read_negotiate_protocol_version, b"\0\0\0\0\0\0\0\x02a\0", "fewer options"),
    (fe_read.read_negotiate_protocol_version, b"\0\0\0\0\xff\xff\xff\xff", "negative count"),
    (fe_read.read_row_description, b"\0\x01a\0\0\0", "short column"),
    (fe_read.read_data_row, b"\0\x01\0\0\0\x05ab", "short value"),
    (fe_read.read_data_row, b"\0\x01\xff\xff\xff\xfe", "length -2"),
]


@pytest.mark.parametrize("reader, payload, why", MALFORMED,
                         ids=[f"{r.__name__}-{w}" for r, _, w in MALFORMED])
def test_malformed_payload(reader, payload, why):
    with pytest.raises(ProtocolError) as exc:
        reader(payload)
    assert isinstance(exc.value, KiwiError)
    assert exc.value.sqlstate == error_codes.PROTOCOL_VIOLATION
    expected_side = "server" if reader.__module__ == "kiwi.fe_read" else "client"
    assert exc.value.side == expected_side


def test_authentication_helpers():
    auth = fe_read.read_authentication(bw.auth_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])[5:])
    assert auth.code == 10 and auth.mechanisms == ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")
    assert fe_read.read_authentication(bw.auth_md5(b"abcd")[5:]).salt == b"abcd"
    # codes the pooler does not know are passed through for it to refuse
    assert fe_read.read_authentication(b"\0\0\0\x07") == fe_read.Authentication(7, b"")
    assert fe_read.read_authentication(b"\0\0\0\x08tok") == fe_read.Authentication(8, b"tok")


def test_error_fields_severity_prefers_nonlocalized():
    fields = fe_read.read_error(b"S\xd0\x9e\xd0\xa8\xd0\x98\xd0\x91\xd0\x9a\xd0\x90\0VERROR\0C42P01\0Mx\0\0")
    assert fields.severity == "ERROR" and fields.get("S") == "ОШИБКА"
    old = fe_read.read_error(b"SERROR\0C42P01\0Mx\0\0")
    assert old.severity == "ERROR" and old.sqlstate == "42P01" and old.detail is None
    latin1 = fe_read.read_error(b"SERROR\0Mcaf\xe9\0\0")
    assert latin1.message.encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_builders_reject_bad_input():
    with pytest.raises(ValueError):
        bw.auth_md5(b"abc")
    with pytest.raises(ValueError):
        bw.ready_for_query(b"X")
    with pytest.raises(ValueError):
        bw.parameter_status("a\0b", "c")
    with pytest.raises(ValueError):
        bw.error_response("ERROR", "123", "bad sqlstate")
    with pytest.raises(TypeError):
        bw.error_response("ERROR", "XX000", "m", nonsense="x")
    with pytest.raises(ValueError):
        fw.describe("X", "a")
    with pytest.raises(ValueError):
        fw.query("a\0b")
    with pytest.raises(ValueError):
        fw.password_message("a\0b")
    with pytest.raises(ValueError):
        fw.startup_message({"": "x"})


def test_error_response_without_v_and_negative_keys():
    assert bw.error_response("ERROR", "XX000", "m", V=None) == b"E\0\0\0\x16SERROR\0CXX000\0Mm\0\0"
    assert bw.backend_key_data(-1, -2) == b"K\0\0\0\x0c\xff\xff\xff\xff\xff\xff\xff\xfe"
    assert fw.cancel_request(-1, 1)[8:] == b"\xff\xff\xff\xff\0\0\0\x01"


def test_relay_limits_allow_only_what_a_logged_in_client_sends():
    from kiwi.framer import FE_RELAY_LIMITS
    allowed = {chr(t) for t in range(256) if FE_RELAY_LIMITS[t] >= 0}
    assert allowed == set("BCDEFHPQSXcdf")
    assert FE_RELAY_LIMITS[ord("Q")] == FE_LIMITS[ord("Q")] == MAX_LARGE_MESSAGE
    assert FE_RELAY_LIMITS[ord("S")] == FE_LIMITS[ord("S")]
    with pytest.raises(ProtocolError):
        read_header(header(ord("p"), 8), 0, FE_RELAY_LIMITS)     # a password after login
