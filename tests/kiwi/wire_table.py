"""The two-way codec table: (builder call, wire bytes, decoder, decoded value).

Every row is used both ways: the builder must produce exactly the wire bytes, and the wire
bytes must frame and decode to the decoded value. Wire bytes are literals; only the long
error rows use ``typed()`` to prepend a header to a literal payload.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from kiwi import be_read, be_write as bw, fe_read, fe_write as fw
from kiwi.be_read import (Bind, CancelRequest, Close, Describe, Execute, GSSENCRequest, Parse,
                          SSLRequest, StartupMessage)
from kiwi.fe_read import Authentication, Column, ErrorFields
from kiwi.framer import BE_LIMITS, FE_LIMITS


def typed(t: bytes, payload: bytes) -> bytes:
    return t + struct.pack("!I", len(payload) + 4) + payload


@dataclass(frozen=True)
class Row:
    id: str
    build: Callable[[], bytes]
    wire: bytes
    decode: Callable[[Any], Any] | None   # payload reader; None = framing only
    value: Any = None
    limits: Any = None                    # FE_LIMITS/BE_LIMITS; None = untyped first packet


ALL_FIELDS_PAYLOAD = (b"SFATAL\0VFATAL\0CXX000\0Mm\0Dd\0Hh\0P1\0p2\0qiq\0Ww\0ss\0tt\0cc\0"
                      b"ddt\0nn\0Ff.c\0L42\0Rr\0\0")
ALL_FIELDS = dict(S="FATAL", V="FATAL", C="XX000", M="m", D="d", H="h", P="1", p="2", q="iq",
                  W="w", s="s", t="t", c="c", d="dt", n="n", F="f.c", L="42", R="r")

BACKEND_ROWS = [
    Row("auth_ok", bw.auth_ok, b"R\0\0\0\x08\0\0\0\0", fe_read.read_authentication,
        Authentication(0, b"")),
    Row("auth_cleartext", bw.auth_cleartext, b"R\0\0\0\x08\0\0\0\x03",
        fe_read.read_authentication, Authentication(3, b"")),
    Row("auth_md5", lambda: bw.auth_md5(b"\x01\x02\x03\x04"),
        b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04", fe_read.read_authentication,
        Authentication(5, b"\x01\x02\x03\x04")),
    Row("auth_sasl", lambda: bw.auth_sasl(["SCRAM-SHA-256"]),
        b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0", fe_read.read_authentication,
        Authentication(10, b"SCRAM-SHA-256\0\0")),
    Row("auth_sasl_continue", lambda: bw.auth_sasl_continue(b"r=abc"),
        b"R\0\0\0\x0d\0\0\0\x0br=abc", fe_read.read_authentication, Authentication(11, b"r=abc")),
    Row("auth_sasl_final", lambda: bw.auth_sasl_final(b"v=xyz"),
        b"R\0\0\0\x0d\0\0\0\x0cv=xyz", fe_read.read_authentication, Authentication(12, b"v=xyz")),
    Row("parameter_status", lambda: bw.parameter_status("client_encoding", "UTF8"),
        b"S\0\0\0\x19client_encoding\0UTF8\0", fe_read.read_parameter_status,
        ("client_encoding", "UTF8")),
    Row("backend_key_data", lambda: bw.backend_key_data(1234, 0xDEADBEEF),
        b"K\0\0\0\x0c\0\0\x04\xd2\xde\xad\xbe\xef", fe_read.read_backend_key_data,
        (1234, 0xDEADBEEF)),
    Row("ready_for_query_idle", bw.ready_for_query, b"Z\0\0\0\x05I",
        fe_read.read_ready_for_query, b"I"),
    Row("ready_for_query_tx", lambda: bw.ready_for_query(b"T"), b"Z\0\0\0\x05T",
        fe_read.read_ready_for_query, b"T"),
    Row("ready_for_query_failed", lambda: bw.ready_for_query("E"), b"Z\0\0\0\x05E",
        fe_read.read_ready_for_query, b"E"),
    Row("error_response", lambda: bw.error_response("ERROR", "42601", "syntax error",
                                                    hint="check it", position=8),
        b"E\0\0\0\x35SERROR\0VERROR\0C42601\0Msyntax error\0Hcheck it\0P8\0\0",
        fe_read.read_error,
        ErrorFields("ERROR", "42601", "syntax error", None, "check it",
                    dict(S="ERROR", V="ERROR", C="42601", M="syntax error", H="check it", P="8"))),
    Row("error_response_all_fields",
        lambda: bw.error_response("FATAL", "XX000", "m", detail="d", hint="h", position=1,
                                  internal_position=2, internal_query="iq", where="w",
                                  schema="s", table="t", column="c", data_type="dt",
                                  constraint="n", file="f.c", line=42, routine="r"),
        typed(b"E", ALL_FIELDS_PAYLOAD), fe_read.read_error,
        ErrorFields("FATAL", "XX000", "m", "d", "h", ALL_FIELDS)),
    Row("error_response_letter_codes",
        lambda: bw.error_response("FATAL", "XX000", "m", "d", "h", P=1, p=2, q="iq", W="w",
                                  s="s", t="t", c="c", d="dt", n="n", F="f.c", L=42, R="r"),
        typed(b"E", ALL_FIELDS_PAYLOAD), fe_read.read_error,
        ErrorFields("FATAL", "XX000", "m", "d", "h", ALL_FIELDS)),
    Row("notice_response", lambda: bw.notice_response("NOTICE", "00000", "hello"),
        b"N\0\0\0\x23SNOTICE\0VNOTICE\0C00000\0Mhello\0\0", fe_read.read_notice,
        ErrorFields("NOTICE", "00000", "hello", None, None,
                    dict(S="NOTICE", V="NOTICE", C="00000", M="hello"))),
    Row("row_description", lambda: bw.row_description([("a", 23), ("b", 25)]),
        b"T\0\0\0\x2e\0\x02"
        b"a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"
        b"b\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        fe_read.read_row_description,
        (Column("a", 0, 0, 23, 4, -1, 0), Column("b", 0, 0, 25, -1, -1, 0))),
    Row("row_description_full", lambda: bw.row_description([("x", 20, 16384, 2, 8, -1, 1)]),
        b"T\0\0\0\x1a\0\x01x\0\0\0\x40\0\0\x02\0\0\0\x14\0\x08\xff\xff\xff\xff\0\x01",
        fe_read.read_row_description, (Column("x", 16384, 2, 20, 8, -1, 1),)),
    Row("data_row", lambda: bw.data_row([b"1", None, "x", ""]),
        b"D\0\0\0\x18\0\x04\0\0\0\x011\xff\xff\xff\xff\0\0\0\x01x\0\0\0\0",
        fe_read.read_data_row, (b"1", None, b"x", b"")),
    Row("command_complete", lambda: bw.command_complete("SELECT 1"),
        b"C\0\0\0\x0dSELECT 1\0", fe_read.read_command_complete, "SELECT 1"),
    Row("empty_query_response", bw.empty_query_response, b"I\0\0\0\x04", None),
    Row("negotiate_protocol_version", lambda: bw.negotiate_protocol_version(0, ["_pq_.x"]),
        b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0", fe_read.read_negotiate_protocol_version,
        (0, ("_pq_.x",))),
    Row("parse_complete", bw.parse_complete, b"1\0\0\0\x04", None),
    Row("bind_complete", bw.bind_complete, b"2\0\0\0\x04", None),
    Row("close_complete", bw.close_complete, b"3\0\0\0\x04", None),
    Row("no_data", bw.no_data, b"n\0\0\0\x04", None),
    Row("portal_suspended", bw.portal_suspended, b"s\0\0\0\x04", None),
]
BACKEND_ROWS = [Row(r.id, r.build, r.wire, r.decode, r.value, BE_LIMITS) for r in BACKEND_ROWS]

FRONTEND_ROWS = [
    Row("password_message", lambda: fw.password_message("secret"), b"p\0\0\0\x0bsecret\0",
        be_read.read_password, b"secret"),
    Row("password_message_md5",
        lambda: fw.password_message(b"md553cd9558ecf6e071b157c089adc0ef7c"),
        b"p\0\0\0\x28md553cd9558ecf6e071b157c089adc0ef7c\0", be_read.read_password,
        b"md553cd9558ecf6e071b157c089adc0ef7c"),
    Row("sasl_initial_response",
        lambda: fw.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"),
        b"p\0\0\0\x21SCRAM-SHA-256\0\0\0\0\x0bn,,n=,r=abc", be_read.read_sasl_initial_response,
        ("SCRAM-SHA-256", b"n,,n=,r=abc")),
    Row("sasl_initial_response_no_data", lambda: fw.sasl_initial_response("SCRAM-SHA-256", None),
        b"p\0\0\0\x16SCRAM-SHA-256\0\xff\xff\xff\xff", be_read.read_sasl_initial_response,
        ("SCRAM-SHA-256", None)),
    Row("sasl_response", lambda: fw.sasl_response(b"c=biws"), b"p\0\0\0\x0ac=biws",
        be_read.read_sasl_response, b"c=biws"),
    Row("query", lambda: fw.query("SELECT 1"), b"Q\0\0\0\x0dSELECT 1\0", be_read.read_query,
        "SELECT 1"),
    Row("query_utf8", lambda: fw.query("SELECT 'é'"), b"Q\0\0\0\x10SELECT '\xc3\xa9'\0",
        be_read.read_query, "SELECT 'é'"),
    Row("query_latin1_bytes", lambda: fw.query(b"SELECT '\xe9'"), b"Q\0\0\0\x0fSELECT '\xe9'\0",
        be_read.read_query, "SELECT '\udce9'"),
    Row("parse", lambda: fw.parse("s1", "SELECT $1", [23]),
        b"P\0\0\0\x17s1\0SELECT $1\0\0\x01\0\0\0\x17", be_read.read_parse,
        Parse("s1", "SELECT $1", (23,))),
    Row("parse_unnamed", lambda: fw.parse("", "SELECT 1"), b"P\0\0\0\x10\0SELECT 1\0\0\0",
        be_read.read_parse, Parse("", "SELECT 1", ())),
    Row("bind", lambda: fw.bind("p1", "s1", [b"42", None], [1], [0, 1]),
        b"B\0\0\0\x20p1\0s1\0\0\x01\0\x01\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\x02\0\0\0\x01",
        be_read.read_bind, Bind("p1", "s1", (1,), (b"42", None), (0, 1))),
    Row("bind_unnamed", lambda: fw.bind(), b"B\0\0\0\x0c\0\0\0\0\0\0\0\0", be_read.read_bind,
        Bind("", "", (), (), ())),
    Row("describe_statement", lambda: fw.describe("S", "s1"), b"D\0\0\0\x08Ss1\0",
        be_read.read_describe, Describe("S", "s1")),
    Row("describe_portal", lambda: fw.describe(b"P"), b"D\0\0\0\x06P\0", be_read.read_describe,
        Describe("P", "")),
    Row("execute", lambda: fw.execute(), b"E\0\0\0\x09\0\0\0\0\0", be_read.read_execute,
        Execute("", 0)),
    Row("execute_rows", lambda: fw.execute("p1", 10), b"E\0\0\0\x0bp1\0\0\0\0\x0a",
        be_read.read_execute, Execute("p1", 10)),
    Row("close_statement", lambda: fw.close("S", "s1"), b"C\0\0\0\x08Ss1\0", be_read.read_close,
        Close("S", "s1")),
    Row("close_portal", lambda: fw.close("P", "p1"), b"C\0\0\0\x08Pp1\0", be_read.read_close,
        Close("P", "p1")),
    Row("sync", fw.sync, b"S\0\0\0\x04", None),
    Row("flush", fw.flush, b"H\0\0\0\x04", None),
    Row("terminate", fw.terminate, b"X\0\0\0\x04", None),
    Row("copy_data", lambda: fw.copy_data(b"abc"), b"d\0\0\0\x07abc", bytes, b"abc"),
    Row("copy_done", fw.copy_done, b"c\0\0\0\x04", None),
    Row("copy_fail", lambda: fw.copy_fail("oops"), b"f\0\0\0\x09oops\0", be_read.read_copy_fail,
        "oops"),
]
FRONTEND_ROWS = [Row(r.id, r.build, r.wire, r.decode, r.value, FE_LIMITS) for r in FRONTEND_ROWS]

STARTUP_ROWS = [
    Row("startup_message", lambda: fw.startup_message({"user": "u", "database": "d"}),
        b"\0\0\0\x1b\0\x03\0\0user\0u\0database\0d\0\0", be_read.read_startup,
        StartupMessage(3, 0, {"user": "u", "database": "d"})),
    Row("startup_message_3_2", lambda: fw.startup_message({"user": "u"}, 3, 2),
        b"\0\0\0\x10\0\x03\0\x02user\0u\0\0", be_read.read_startup,
        StartupMessage(3, 2, {"user": "u"})),
    Row("startup_message_utf8", lambda: fw.startup_message({"user": "ü", "options": "-c a=b"}),
        b"\0\0\0\x20\0\x03\0\0user\0\xc3\xbc\0options\0-c a=b\0\0", be_read.read_startup,
        StartupMessage(3, 0, {"user": "ü", "options": "-c a=b"})),
    Row("ssl_request", fw.ssl_request, b"\0\0\0\x08\x04\xd2\x16\x2f", be_read.read_startup,
        SSLRequest()),
    Row("gssenc_request", fw.gssenc_request, b"\0\0\0\x08\x04\xd2\x16\x30", be_read.read_startup,
        GSSENCRequest()),
    Row("cancel_request", lambda: fw.cancel_request(1234, 0xCAFEBABE),
        b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x04\xd2\xca\xfe\xba\xbe", be_read.read_startup,
        CancelRequest(1234, 0xCAFEBABE)),
]

TYPED_ROWS = BACKEND_ROWS + FRONTEND_ROWS
ALL_ROWS = TYPED_ROWS + STARTUP_ROWS
