"""The errors the pooler sends itself: prefix and fields of error_message() (reference 6;
Odyssey od_frontend_error)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiwi import fe_read
from kiwi.header import BE
from odyssey_gevent.id import new_id
from odyssey_gevent.status import FrontendError, Status, error_message, error_prefix


def parse(raw: bytes):
    assert raw[0] == BE.ERROR_RESPONSE == ord("E")
    assert int.from_bytes(raw[1:5], "big") == len(raw) - 1
    return fe_read.read_error(raw[5:])


def test_prefix_with_client_id():
    cid = new_id("c")
    err = FrontendError("53300", "too many client tcp connections (global client_max)")
    f = parse(error_message(err, cid))
    assert f.message == f"odyssey: {cid}: too many client tcp connections (global client_max)"
    assert (f.fields["S"], f.fields["V"], f.severity, f.sqlstate) == ("ERROR", "ERROR", "ERROR", "53300")
    assert f.detail is None and f.hint is None
    assert set(f.fields) == {"S", "V", "C", "M"}


@pytest.mark.parametrize("cid, show_id", [("c0123456789ab", False), (None, True), ("", True)])
def test_prefix_without_id(cid, show_id):
    f = parse(error_message(FrontendError("3D000", "route for 'd.u' is not found"), cid, show_id))
    assert f.message == "odyssey: route for 'd.u' is not found"


def test_error_prefix():
    assert error_prefix("c000000000001") == "odyssey: c000000000001: "
    assert error_prefix("c000000000001", show_id=False) == "odyssey: "
    assert error_prefix(None) == "odyssey: "


def test_all_fields():
    err = FrontendError("08006", "Odyssey has dropped the connection", severity="FATAL",
                        detail="Connection was killed by Odyssey configuration reloading or console command",
                        hint="Try to reconnect")
    f = parse(error_message(err, "cabcdefabcdef"))
    assert dict(f.fields) == {
        "S": "FATAL", "V": "FATAL", "C": "08006",
        "M": "odyssey: cabcdefabcdef: Odyssey has dropped the connection",
        "D": "Connection was killed by Odyssey configuration reloading or console command",
        "H": "Try to reconnect",
    }
    assert (f.severity, f.detail, f.hint) == ("FATAL", err.detail, err.hint)


def test_frontend_error_defaults():
    e = FrontendError("28000", "no PostgreSQL user name specified in startup packet")
    assert (e.sqlstate, e.severity, e.detail, e.hint, str(e)) == (
        "28000", "ERROR", None, None, "no PostgreSQL user name specified in startup packet")


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)


@given(st.sampled_from(["ERROR", "FATAL", "PANIC"]), st.from_regex(r"[0-9A-Z]{5}", fullmatch=True), text,
       st.none() | text, st.none() | text, st.booleans())
@settings(max_examples=200, deadline=None)
def test_roundtrip_any_text(severity, sqlstate, message, detail, hint, show_id):
    cid = "c0123456789ab"
    f = parse(error_message(FrontendError(sqlstate, message, severity, detail, hint), cid, show_id))
    prefix = f"odyssey: {cid}: " if show_id else "odyssey: "
    assert (f.severity, f.sqlstate, f.message) == (severity, sqlstate, prefix + message)
    assert (f.detail, f.hint) == (detail, hint)


def test_status_values_are_odyssey_names():
    assert Status.ECLIENT_READ.value == "OD_ECLIENT_READ"
    assert Status.TERMINATE.value == "OD_TERMINATE"
    assert len({s.value for s in Status}) == len(Status)
