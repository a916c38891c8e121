"""Hypothesis fuzzing: on arbitrary or mutated bytes every reader returns a message, "need
more" (None), or raises kiwi's ProtocolError; never any other exception. Oversized declared
lengths fail at once, with only the header buffered."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kiwi import be_read, fe_read
from kiwi.be_read import MAX_STARTUP_PACKET_LENGTH, read_startup, startup_need
from kiwi.errors import ProtocolError
from kiwi.framer import (BE_LIMITS, DEFAULT_LIMITS, FE_LIMITS, Framer, message_need,
                         read_header, read_message)
from kiwi.scram import ScramClient, ScramError, ScramServer, make_secret
from tests.kiwi.wire_table import STARTUP_ROWS, TYPED_ROWS

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

PAYLOAD_READERS = [
    be_read.read_password, be_read.read_sasl_initial_response, be_read.read_sasl_response,
    be_read.read_query, be_read.read_parse, be_read.read_bind, be_read.read_describe,
    be_read.read_close, be_read.read_execute, be_read.read_copy_fail,
    fe_read.read_error, fe_read.read_notice, fe_read.read_parameter_status,
    fe_read.read_backend_key_data, fe_read.read_ready_for_query, fe_read.read_authentication,
    fe_read.read_command_complete, fe_read.read_negotiate_protocol_version,
    fe_read.read_row_description, fe_read.read_data_row,
]
LIMITS = [FE_LIMITS, BE_LIMITS, DEFAULT_LIMITS]


@st.composite
def mutated(draw, wires):
    """A valid wire message with a few bytes changed, then cut or extended."""
    data = bytearray(draw(st.sampled_from(wires)))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data) + 8))
    return bytes(data[:cut]) + draw(st.binary(max_size=8))


TYPED_WIRES = [r.wire for r in TYPED_ROWS]
STARTUP_WIRES = [r.wire for r in STARTUP_ROWS]
PAYLOADS = [r.wire[5:] for r in TYPED_ROWS]
anything = st.binary(max_size=300)
typed_input = st.one_of(anything, mutated(TYPED_WIRES))
startup_input = st.one_of(anything, mutated(STARTUP_WIRES))
payload_input = st.one_of(anything, mutated(PAYLOADS))


@settings(FUZZ, max_examples=300)
@given(data=payload_input)
def test_payload_readers(data):
    # every reader sees every example (cheaper than one hypothesis run per reader)
    for reader in PAYLOAD_READERS:
        try:
            reader(data)
        except ProtocolError:
            pass


@FUZZ
@given(data=startup_input)
def test_read_startup(data):
    try:
        need = startup_need(data)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            read_startup(data)
        return
    try:
        msg, used = read_startup(data)
    except ProtocolError:
        assert need == 0
        return
    if msg is None:
        assert used == 0 and need > 0
    else:
        assert need == 0 and 8 <= used <= len(data)


@settings(FUZZ, max_examples=300)
@given(data=typed_input)
def test_read_message(data):
    for limits in LIMITS:
        _check_read_message(data, limits)


def _check_read_message(data, limits):
    try:
        got = read_message(data, 0, limits)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            read_header(data, 0, limits)
        return
    need = message_need(data, 0, limits)
    if got is None:
        assert need > 0
    else:
        t, payload, end = got
        assert need == 0 and end == 5 + len(payload) <= len(data) and t == data[0]


@FUZZ
@given(data=st.lists(typed_input, max_size=6), limits=st.sampled_from(LIMITS))
def test_framer_stream_in_chunks(data, limits):
    stream = b"".join(data)
    framer = Framer(limits)
    out = []
    try:
        for i in range(0, len(stream), 7):
            framer.feed(stream[i:i + 7])
            out.extend(framer)
        framer.need()
    except ProtocolError:
        return
    # what came out re-frames to exactly the bytes consumed
    rebuilt = b"".join(bytes([t]) + struct.pack("!I", len(p) + 4) + p for t, p in out)
    assert stream.startswith(rebuilt)
    assert len(framer) == len(stream) - len(rebuilt)


@FUZZ
@given(declared=st.one_of(st.integers(0, 7),
                          st.integers(MAX_STARTUP_PACKET_LENGTH + 5, 0xFFFFFFFF)),
       extra=st.binary(max_size=12))
def test_oversized_startup_fails_on_length_word(declared, extra):
    head = struct.pack("!I", declared)
    with pytest.raises(ProtocolError):
        startup_need(head)
    with pytest.raises(ProtocolError):
        read_startup(head + extra)


@FUZZ
@given(t=st.integers(0x20, 0xFF), data=st.data(), limits=st.sampled_from(LIMITS))
def test_oversized_typed_fails_on_header(t, data, limits):
    declared = data.draw(st.one_of(st.integers(0, 3),
                                   st.integers(limits[t] + 5, 0xFFFFFFFF)))
    head = struct.pack("!BI", t, declared)
    with pytest.raises(ProtocolError):
        read_header(head, 0, limits)
    framer = Framer(limits)
    framer.feed(head)
    with pytest.raises(ProtocolError):
        framer.next()


# --- SCRAM: arbitrary client and server messages give ScramError only ----------------------

SECRET = make_secret("pencil", 4096)


@FUZZ
@given(client_first=st.one_of(st.binary(max_size=120),
                              st.builds(lambda a, b: b"n,," + a + b"r=" + b,
                                        st.binary(max_size=20), st.binary(max_size=20))))
def test_scram_server_first(client_first):
    server = ScramServer(SECRET)
    try:
        server.first(client_first)
    except ScramError:
        pass


@FUZZ
@given(client_final=st.binary(max_size=200), prefix=st.booleans())
def test_scram_server_final(client_final, prefix):
    server = ScramServer(SECRET)
    server.first(b"n,,n=,r=abcdef")
    if prefix:
        client_final = b"c=biws,r=abcdef" + client_final
    with pytest.raises(ScramError):
        server.final(client_final)


@FUZZ
@given(server_first=st.binary(max_size=200), server_final=st.binary(max_size=80))
def test_scram_client(server_first, server_final):
    client = ScramClient("pencil", nonce="abcdef")
    client.first()
    try:
        client.final(server_first)
    except ScramError:
        return
    with pytest.raises(ScramError):
        client.verify(server_final)
