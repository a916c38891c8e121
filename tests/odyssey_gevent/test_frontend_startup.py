"""The frontend's first stages over a real socket pair: startup packets (SSLRequest,
GSSENCRequest, CancelRequest, protocol versions, NegotiateProtocolVersion), the options
parameter, and routing with the rule's options (reference 3.5 and 6; Odyssey frontend.c)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from gevent import socket as gsocket

import machinarium as mm
from kiwi import be_write, error_codes, fe_read, fe_write
from kiwi.errors import ProtocolError
from kiwi.header import BE
from odyssey_gevent import frontend as frontend_mod
from odyssey_gevent.client import Client
from odyssey_gevent.config.model import Rule, Storage
from odyssey_gevent.frontend import Frontend, parse_options
from odyssey_gevent.logger import Logger
from odyssey_gevent.router import Router
from odyssey_gevent.status import FrontendError

pytestmark = pytest.mark.timeout(10)


# ----------------------------------------------------------------------------------------------
# parse_options

@pytest.mark.parametrize("value, expected", [
    ("-c a=b", {"a": "b"}),
    ("-ca=b", {"a": "b"}),
    ("--a-b=c", {"a_b": "c"}),
    ("--a-b=c-d", {"a_b": "c-d"}),
    ("-c statement-timeout=5s", {"statement_timeout": "5s"}),
    ("-c search_path=a\\ b", {"search_path": "a b"}),
    ("-c x=a\\\\b", {"x": "a\\b"}),
    ("-c a=b=c", {"a": "b=c"}),
    ("-c a=", {"a": ""}),
    ("-c a=1 -cb=2 --c=3\t-c  d=4", {"a": "1", "b": "2", "c": "3", "d": "4"}),
    ("-c a=1 -c a=2", {"a": "2"}),
    ("garbage -c a=b junk -x --noeq -cnoeq x=y -c", {"a": "b"}),
    ("", {}),
    ("   ", {}),
    ("-c", {}),
    ("--", {}),
])
def test_parse_options(value, expected):
    assert parse_options(value) == expected


# ----------------------------------------------------------------------------------------------
# startup over a socket pair

class FakeRouter:
    def __init__(self):
        self.cancels = []

    def cancel_target(self, pid, key):
        self.cancels.append((pid, key))
        return None


def _instance(router=None):
    return SimpleNamespace(config=SimpleNamespace(client_max=None, log_session=False),
                           logger=Logger(to_stdout=False), router=router or FakeRouter(),
                           tls_context=lambda listen: None)


def _startup(packets: bytes, listen=None, instance=None, replies=0):
    """Run Frontend.startup() with `packets` sent by the app; return (result or exception,
    client, bytes the app received)."""
    a, b = gsocket.socketpair()
    app, pooler = mm.Io(a), mm.Io(b)
    try:
        client = Client(pooler, listen, "host", ("127.0.0.1", 40000))
        fe = Frontend(instance or _instance(), client)
        app.write(packets)
        try:
            result = fe.startup()
        except FrontendError as e:
            result = e
        pooler.close()
        received = bytearray()
        buf = bytearray(4096)
        while True:
            n = app.read_into(buf, 1000)
            if not n:
                break
            received += buf[:n]
        return result, client, bytes(received)
    finally:
        app.close(), pooler.close()


def _sm(params, major=3, minor=0):
    return fe_write.startup_message(params, major, minor)


def test_ssl_request_answered_n_then_startup(in_machine):
    def body():
        res, client, got = _startup(fe_write.ssl_request() + _sm({"user": "u", "database": "d"}))
        assert res is True and got == b"N"
        assert (client.user, client.database, client.tls) == ("u", "d", False)
        assert client.startup.params == {"user": "u", "database": "d"}
        return True

    assert in_machine(body)


def test_ssl_request_on_listen_without_tls_context(in_machine):
    def body():
        listen = SimpleNamespace(tls="allow")
        res, client, got = _startup(fe_write.ssl_request() + _sm({"user": "u"}), listen=listen)
        assert res is True and got == b"N"
        return True

    assert in_machine(body)


def test_gssenc_request_answered_n(in_machine):
    def body():
        res, client, got = _startup(fe_write.gssenc_request() + fe_write.ssl_request() + _sm({"user": "u"}))
        assert res is True and got == b"NN"
        assert client.database == "u"             # defaults to the user name
        return True

    assert in_machine(body)


def test_tls_required_without_ssl_request(in_machine):
    def body():
        res, _, _ = _startup(_sm({"user": "u"}), listen=SimpleNamespace(tls="require"))
        assert isinstance(res, FrontendError)
        assert (res.sqlstate, res.message) == (error_codes.PROTOCOL_VIOLATION, "SSL is required")
        return True

    assert in_machine(body)


def test_protocol_2_is_rejected(in_machine):
    def body():
        res, client, got = _startup(_sm({"user": "u"}, major=2, minor=0))
        assert isinstance(res, FrontendError)
        assert res.sqlstate == "0A000" and res.severity == "FATAL"
        assert res.message == "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"
        assert got == b"" and client.user is None
        return True

    assert in_machine(body)


def test_minor_version_negotiation(in_machine):
    def body():
        res, client, got = _startup(_sm({"user": "u", "_pq_.x": "1", "_pq_.y": "2", "application_name": "a"},
                                        minor=1))
        assert res is True
        assert got[:1] == bytes([BE.NEGOTIATE_PROTOCOL_VERSION]) == b"v"
        assert fe_read.read_negotiate_protocol_version(got[5:]) == (0, ("_pq_.x", "_pq_.y"))
        assert len(got) == 1 + int.from_bytes(got[1:5], "big")
        assert client.vars == {"application_name": "a"}
        return True

    assert in_machine(body)


def test_minor_version_without_options_still_negotiates(in_machine):
    def body():
        res, client, got = _startup(_sm({"user": "u"}, minor=2))
        assert res is True
        assert fe_read.read_negotiate_protocol_version(got[5:]) == (0, ())
        return True

    assert in_machine(body)


@pytest.mark.parametrize("params", [{"database": "d"}, {"user": "", "database": "d"}])
def test_missing_user_is_28000(in_machine, params):
    def body():
        res, client, _ = _startup(_sm(params))
        assert isinstance(res, FrontendError)
        assert res.sqlstate == error_codes.INVALID_AUTHORIZATION_SPECIFICATION == "28000"
        assert res.message == "no PostgreSQL user name specified in startup packet"
        return True

    assert in_machine(body)


def test_replication_values(in_machine):
    def body():
        res, _, _ = _startup(_sm({"user": "u", "replication": "database"}))
        assert res is True
        res, _, _ = _startup(_sm({"user": "u", "replication": "maybe"}))
        assert isinstance(res, FrontendError) and res.sqlstate == "08006"
        assert res.message == 'invalid value for parameter "replication"'
        return True

    assert in_machine(body)


def test_options_become_vars(in_machine):
    def body():
        res, client, got = _startup(_sm({"user": "u", "database": "d", "application_name": "app",
                                         "options": "-c search_path=a\\ b --statement-timeout=5s",
                                         "DateStyle": "ISO"}))
        assert res is True and got == b""
        assert client.vars == {"application_name": "app", "datestyle": "ISO", "search_path": "a b",
                               "statement_timeout": "5s"}
        for k in ("user", "database", "options"):
            assert k not in client.vars
        return True

    assert in_machine(body)


def test_cancel_request_is_forwarded_and_ends_startup(in_machine):
    def body():
        inst = _instance()
        res, client, got = _startup(fe_write.cancel_request(1234, 5678), instance=inst)
        assert res is False and got == b""
        assert inst.router.cancels == [(1234, 5678)]
        return True

    assert in_machine(body)


def test_startup_bytes_trickling_in(in_machine):
    def body():
        a, b = gsocket.socketpair()
        app, pooler = mm.Io(a), mm.Io(b)
        try:
            client = Client(pooler, None, "host", ("127.0.0.1", 1))
            fe = Frontend(_instance(), client)
            data = fe_write.ssl_request() + _sm({"user": "trickle", "options": "-c a=b"})

            def writer():
                for i in range(len(data)):
                    app.write(data[i:i + 1])
                    mm.sleep(0)

            co = mm.Coroutine(writer)
            assert fe.startup() is True
            co.join(2000)
            assert client.user == "trickle" and client.vars == {"a": "b"}
            assert app.read(1, 1000) == b"N"
        finally:
            app.close(), pooler.close()
        return True

    assert in_machine(body)


# ----------------------------------------------------------------------------------------------
# route(): the rule's options override the client's

class _Rules:
    def __init__(self, rule):
        self.rule = rule

    def match(self, *args):
        return self.rule


def test_route_applies_rule_options_and_add_host():
    rule = Rule(authentication="none", pool="transaction", options={"search_path": "forced", "work_mem": "1MB"},
                application_name_add_host=True)
    inst = _instance()
    inst.rules = _Rules(rule)
    inst.close_server_later = lambda s: None
    inst.router = Router(inst)
    client = Client(None, None, "host", ("10.1.2.3", 5000))
    client.user, client.database = "u", "d"
    client.vars = {"search_path": "mine", "application_name": "x" * 70}
    Frontend(inst, client).route()
    assert client.rule is rule and client.route is not None and not client.is_console
    assert client.vars["search_path"] == "forced" and client.vars["work_mem"] == "1MB"
    assert client.vars["application_name"] == ("x" * 70 + " - 10.1.2.3")[:63]


def test_route_add_host_without_application_name():
    rule = Rule(authentication="none", pool="session", application_name_add_host=True)
    inst = _instance()
    inst.rules = _Rules(rule)
    inst.router = Router(inst)
    client = Client(None, None, "host", ("10.1.2.3", 5000))
    client.user, client.database = "u", "d"
    Frontend(inst, client).route()
    assert client.vars["application_name"] == " - 10.1.2.3"


def test_route_console_rule():
    rule = Rule(authentication="none", pool="session", storage=Storage(name="local", type="local"))
    inst = _instance()
    inst.rules = _Rules(rule)
    inst.router = Router(inst)
    client = Client(None, None, "host", ("10.1.2.3", 5000))
    client.user, client.database = "u", "console"
    Frontend(inst, client).route()
    assert client.is_console


def test_session_vars_are_kept_by_the_startup_parameters():
    """session_vars works a parameter set out once and gives each client a copy of its own: a
    change to one client's vars (a SET, a rule's options) reaches neither the next client with
    the same parameters nor the kept result; other parameters get their own result."""
    from odyssey_gevent.frontend import _VARS, session_vars

    params = {"user": "u", "database": "d", "Application_Name": "app", "options": "-c work_mem=8MB",
              "_pq_.x": "1"}
    first = session_vars(params)
    assert first == {"application_name": "app", "work_mem": "8MB"}
    assert _VARS[tuple(params.items())] == first
    first["application_name"] = "changed"
    second = session_vars(dict(params))
    assert second == {"application_name": "app", "work_mem": "8MB"} and second is not first
    assert session_vars({"user": "u", "TimeZone": "UTC"}) == {"timezone": "UTC"}


# ----------------------------------------------------------------------------------------------
# the startup packet's first bytes read at accept (Frontend.head, up to 8): the rest by one recv

def _startup_after_accept(first: bytes, later: bytes = b"", trickle: bool = False, head: int = 8):
    """Frontend.startup() with the first `head` bytes of `first` read at accept (fe.head) and the rest
    of it (and `later`, byte by byte when `trickle`) sent by the app; returns (result or
    exception, client, what is left unread in the pooler's socket)."""
    a, b = gsocket.socketpair()
    app, pooler = mm.Io(a), mm.Io(b)
    try:
        client = Client(pooler, None, "host", ("127.0.0.1", 40000))
        fe = Frontend(_instance(), client)
        app.write(first)
        fe.head = pooler.read(head, 1000)
        co = None
        if trickle:
            def writer():
                for i in range(len(later)):
                    app.write(later[i:i + 1])
                    mm.sleep(0)
            co = mm.Coroutine(writer)
        elif later:
            app.write(later)
        try:
            result = fe.startup()
        except (FrontendError, ProtocolError, OSError) as e:
            result = e
        if co is not None:
            co.join(2000)
        left = pooler.recv_now(4096) or b""
        return result, client, left
    finally:
        app.close(), pooler.close()


@pytest.mark.parametrize("head", [4, 5, 8])
def test_packet_after_the_accepts_first_bytes_is_read_whole_and_nothing_more(in_machine, head):
    def body():
        query = b"Q\x00\x00\x00\x0dselect 1\x00"     # a client that sends on without waiting
        res, client, left = _startup_after_accept(_sm({"user": "u", "database": "d"}) + query, head=head)
        assert res is True and (client.user, client.database) == ("u", "d")
        assert left == query
        return True

    assert in_machine(body)


def test_packet_after_the_accepts_length_word_coming_in_pieces(in_machine):
    def body():
        sm = _sm({"user": "trickle", "options": "-c a=b"})
        res, client, left = _startup_after_accept(sm[:6], sm[6:], trickle=True, head=4)
        assert res is True and client.user == "trickle" and client.vars == {"a": "b"} and left == b""
        return True

    assert in_machine(body)


@pytest.mark.parametrize("head", [4, 8])
def test_ssl_request_read_at_accept_then_startup(in_machine, head):
    def body():
        res, client, left = _startup_after_accept(fe_write.ssl_request() + _sm({"user": "u"}), head=head)
        assert res is True and client.user == "u" and left == b""
        return True

    assert in_machine(body)


def test_bad_length_word_at_accept_is_refused_before_the_body(in_machine):
    def body():
        res, _, left = _startup_after_accept(b"\x00\x00\x00\x02" + b"x" * 10)
        assert isinstance(res, ProtocolError) and left == b"x" * 6
        return True

    assert in_machine(body)


def test_eof_after_the_accepts_first_bytes(in_machine):
    def body():
        a, b = gsocket.socketpair()
        app, pooler = mm.Io(a), mm.Io(b)
        try:
            fe = Frontend(_instance(), Client(pooler, None, "host", ("127.0.0.1", 1)))
            app.write(_sm({"user": "u"})[:10])
            fe.head = pooler.read(8, 1000)
            app.close()
            with pytest.raises(mm.ConnectionClosed):
                fe.startup()
        finally:
            app.close(), pooler.close()
        return True

    assert in_machine(body)


# ----------------------------------------------------------------------------------------------
# setup(): AuthenticationOk (owed), the route's ParameterStatus with the client's own values,
# BackendKeyData, ReadyForQuery, in one write

class _Partial:
    """os.write as setup() calls it (frontend._write), its first call writing only `first` bytes."""
    def __init__(self, first):
        self.first = first

    def __call__(self, fd, data):
        if self.first is not None:
            data, self.first = bytes(data)[:self.first], None
        return os.write(fd, data)


@pytest.mark.parametrize("partial", [None, 7])
def test_setup_writes_the_login_messages_in_order(in_machine, partial, monkeypatch):
    from odyssey_gevent import auth
    from odyssey_gevent.route import Route

    def body():
        a, b = gsocket.socketpair()
        app, pooler = mm.Io(a), mm.Io(b)
        try:
            client = Client(pooler, None, "host", ("127.0.0.1", 1))
            client.rule = Rule(db_name="d", user_name="u", pool="transaction")
            client.route = Route(("d", "u", 1), client.rule, "d", "u")
            client.route.params = [("server_version", "16.0"), ("application_name", "")]
            client.vars = {"application_name": "mine"}
            fe = Frontend(_instance(), client)
            fe.owed = auth.AUTH_OK_MESSAGE
            stand_in = _Partial(partial)
            if partial is not None:
                monkeypatch.setattr(frontend_mod, "_write", stand_in)
            fe.setup()
            want = (auth.AUTH_OK_MESSAGE + be_write.parameter_status("server_version", "16.0")
                    + be_write.parameter_status("application_name", "mine")
                    + be_write.backend_key_data(client.key_pid, client.key_secret) + be_write.ready_for_query(b"I"))
            # (the partial case: its one short write was made)
            return app.read(len(want), 1000) == want and fe.owed is None and stand_in.first is None
        finally:
            app.close(), pooler.close()

    assert in_machine(body)


@pytest.mark.parametrize("pid", [-5, 2 ** 32 + 7])
def test_setup_packs_a_server_given_pid_to_32_bits(in_machine, pid):
    """BackendKeyData carries the pid and secret as 32 bits: a pid that does not fit (a server's,
    given by rekey) is masked as before, the client's own key packed as it is."""
    from odyssey_gevent import auth
    from odyssey_gevent.route import Route

    def body():
        a, b = gsocket.socketpair()
        app, pooler = mm.Io(a), mm.Io(b)
        try:
            client = Client(pooler, None, "host", ("127.0.0.1", 1))
            client.rule = Rule(db_name="d", user_name="u", pool="transaction")
            client.route = Route(("d", "u", 1), client.rule, "d", "u")
            client.route.params = [("server_version", "16.0")]
            client.key_pid = pid
            fe = Frontend(_instance(), client)
            fe.owed = auth.AUTH_OK_MESSAGE
            fe.setup()
            want = (auth.AUTH_OK_MESSAGE + be_write.parameter_status("server_version", "16.0")
                    + be_write.backend_key_data(pid & 0xFFFFFFFF, client.key_secret) + be_write.ready_for_query(b"I"))
            return app.read(len(want), 1000) == want
        finally:
            app.close(), pooler.close()

    assert in_machine(body)


def test_startups_with_the_same_parameters_get_their_own_vars(in_machine):
    def body():
        sm = _sm({"user": "kept", "application_name": "app", "options": "-c a=b"})
        _, first, _ = _startup(sm)
        _, second, _ = _startup(sm)          # the kept result of the first
        first.vars["a"] = "changed"
        return second.vars, second.vars is first.vars

    assert in_machine(body) == ({"application_name": "app", "a": "b"}, False)


def test_route_keeps_the_tsa_checks_of_clients_without_hints():
    """Frontend.route: a client without startup hints gets the checks its route keeps for its
    listen block (attach_plain with none to make); one with a hint, or of another listen block,
    gets its own."""
    from odyssey_gevent import tsa
    rule = Rule(authentication="none", pool="transaction")
    inst = _instance()
    inst.rules = _Rules(rule)
    inst.close_server_later = lambda s: None
    inst.router = Router(inst)
    listen, other = (SimpleNamespace(target_session_attrs=None, catchup_timeout=0) for _ in range(2))

    def login(vars_, lst=listen):
        client = Client(None, lst, "host", ("10.1.2.3", 5000))
        client.user, client.database = "u", "d"
        client.vars = dict(vars_)
        fe = Frontend(inst, client)
        fe.route()
        return client, fe

    first, fe1 = login({})
    second, fe2 = login({"application_name": "x"})
    hinted, fe3 = login({tsa.HINT: "read-write"})
    elsewhere, _ = login({}, other)
    assert second.tsa_checks is first.tsa_checks and fe1.attach_plain and fe2.attach_plain
    assert hinted.tsa_checks is not first.tsa_checks and hinted.tsa_checks[1] == "read-write"
    assert not fe3.attach_plain
    assert elsewhere.tsa_checks is not first.tsa_checks


def test_the_coroutine_entry_makes_its_frontend_as_frontend_init_does(monkeypatch):
    """frontend() makes the Frontend with __init__'s body inline: the same attributes, in the
    same order (the instances then share one key layout), the startup head given."""
    seen = []
    monkeypatch.setattr(Frontend, "run", lambda self, resumed=False, deadline=None: seen.append((self, resumed, deadline)))
    inst = _instance()
    frontend_mod.frontend(inst, None, None, "host", ("127.0.0.1", 1), None, 5.0, b"head")
    [(made, resumed, deadline)] = seen
    ref = Frontend(inst, made.client)
    ref.head = b"head"
    assert list(vars(made)) == list(vars(ref)) and vars(made) == vars(ref) and deadline == 5.0
    assert resumed is False


@pytest.mark.parametrize("peer, accepted", [(("127.0.0.1", 1), None), (None, 12.5)])
def test_the_coroutine_entry_makes_its_client_as_client_init_does(monkeypatch, peer, accepted):
    """frontend() makes the Client with __init__'s body inline: every slot set as there (its
    own id and cancel key, the accept time given or now)."""
    import time
    seen = []
    monkeypatch.setattr(Frontend, "run", lambda self, resumed=False, deadline=None: seen.append(self.client))
    io, listen, local = object(), object(), ("127.0.0.2", 6432)
    before = time.monotonic()
    frontend_mod.frontend(_instance(), io, listen, "local", peer, local, None, None, accepted)
    [made] = seen
    ref = Client(io, listen, "local", peer, local)
    own = ("id", "key_pid", "key_secret", "time_accept")
    for name in Client.__slots__:
        if name not in own:
            assert getattr(made, name) == getattr(ref, name), name
    assert made.vars is not ref.vars and made.id != ref.id and made.key_secret != ref.key_secret
    assert made.time_accept == accepted if accepted is not None else made.time_accept >= before



# ----------------------------------------------------------------------------------------------
# the startup packets kept by their bytes (frontend._STARTUPS) and the vars' key (Client.vars_key)

def _kept_startup(packet: bytes, listen=None, head: int = 8):
    """Frontend.startup() with the packet's first `head` bytes read at accept and the rest there:
    (result or exception, client)."""
    a, b = gsocket.socketpair()
    app, pooler = mm.Io(a), mm.Io(b)
    try:
        client = Client(pooler, listen, "host", ("127.0.0.1", 40000))
        fe = Frontend(_instance(), client)
        app.write(packet)
        fe.head = pooler.read(head, 1000)
        try:
            result = fe.startup()
        except FrontendError as e:
            result = e
        return result, client
    finally:
        app.close(), pooler.close()


def test_a_kept_startup_packet_gives_what_reading_it_gives(in_machine):
    """A plain 3.0 StartupMessage read whole is kept by its bytes: the next client that sends the
    same bytes gets the same message, user, database and vars (its own copy) and the kept bytes as
    its vars_key, and a listener that requires TLS still refuses it; a 3.1 packet and a
    replication one are not kept, nor is a packet read in pieces (no vars_key: their vars are
    looked up by their items)."""
    def body():
        frontend_mod._STARTUPS.clear()
        sm = _sm({"user": "ku", "database": "kd", "application_name": "app", "options": "-c a=b"})
        res1, first = _kept_startup(sm)
        assert sm in frontend_mod._STARTUPS and first.vars_key == sm
        res2, second = _kept_startup(sm)
        assert res1 is res2 is True
        assert (second.user, second.database, second.startup) == ("ku", "kd", first.startup)
        assert second.vars == first.vars == {"application_name": "app", "a": "b"}
        assert second.vars is not first.vars and second.vars_key is first.vars_key
        second.vars["a"] = "changed"
        _, third = _kept_startup(sm)
        assert third.vars == {"application_name": "app", "a": "b"}
        required = SimpleNamespace(tls="require", client_login_timeout=0)
        refused, _ = _kept_startup(sm, required)
        assert isinstance(refused, FrontendError) and "SSL is required" in refused.message
        for other in (_sm({"user": "v31"}, minor=1), _sm({"user": "r", "replication": "true"})):
            res, client = _kept_startup(other)
            assert res is True and client.vars_key is None and other not in frontend_mod._STARTUPS
        pieces = _sm({"user": "pieces"})
        res, _, _ = _startup_after_accept(pieces[:6], pieces[6:], trickle=True, head=4)
        assert res is True and pieces not in frontend_mod._STARTUPS
        return True

    assert in_machine(body)


class _Routed(Exception):
    """Raised by a stand-in for Frontend.route: the session got past its startup."""


def _kept_run(packet: bytes, listen=None):
    """Frontend.run() (its startup stage) with the packet's first 8 bytes
    read at accept and the rest there, stopped where it routes: (True, or the FrontendError it
    sent, client)."""
    a, b = gsocket.socketpair()
    app, pooler = mm.Io(a), mm.Io(b)
    inst = _instance()
    inst.router.unroute = lambda client: None
    inst.workers, inst.clients = 1, 1
    client = Client(pooler, listen, "host", ("127.0.0.1", 40000))
    fe = Frontend(inst, client)
    sent = []
    fe._send_error = sent.append

    def routed():
        raise _Routed
    fe.route = routed
    try:
        app.write(packet)
        fe.head = pooler.read(8, 1000)
        try:
            fe.run(False, 0)
        except _Routed:
            return True, client
        return sent[0], client
    finally:
        app.close(), pooler.close()


def test_the_session_takes_a_kept_startup_packet_as_startup_does(in_machine):
    """A session (Frontend.run) takes a packet kept by its bytes as startup alone does: the
    same message, user, database, vars (its own copy) and vars_key, the head given up; a
    listener that requires TLS still refuses it; a packet not kept yet is read and kept, one
    that declares fewer bytes than the accept read is refused."""
    def body():
        frontend_mod._STARTUPS.clear()
        sm = _sm({"user": "ru", "database": "rd", "application_name": "app"})
        res1, first = _kept_run(sm)                 # not kept yet: startup reads and keeps it
        assert res1 is True and sm in frontend_mod._STARTUPS and first.vars_key == sm
        res2, second = _kept_startup(sm)
        res3, third = _kept_run(sm)                 # kept: taken by run itself
        assert res2 is res3 is True
        for client in (first, third):
            assert (client.user, client.database, client.startup) == ("ru", "rd", second.startup)
            assert client.vars == second.vars == {"application_name": "app"}
            assert client.vars is not second.vars and client.vars_key is second.vars_key
        third.vars["application_name"] = "changed"
        _, fourth = _kept_run(sm)
        assert fourth.vars == {"application_name": "app"}
        required = SimpleNamespace(tls="require", client_login_timeout=0)
        refused, _ = _kept_run(sm, required)
        assert isinstance(refused, FrontendError) and "SSL is required" in refused.message
        short = (7).to_bytes(4, "big") + b"\0\3\0\0" + sm[8:]
        refused, _ = _kept_run(short)
        assert isinstance(refused, FrontendError) and refused.sqlstate == "08P01"
        return True

    assert in_machine(body)


def _routed(rule, inst, vars_, key, peer=("10.1.2.3", 5000)):
    client = Client(None, None, "host" if peer else "local", peer)
    client.user, client.database = "u", "d"
    client.vars, client.vars_key = dict(vars_), key
    Frontend(inst, client).route()
    return client


def test_route_drops_the_vars_key_where_it_changes_the_vars():
    """A rule's options and application_name_add_host change the vars the startup packet gave:
    the client's vars_key is dropped then (deploy's list is worked out from the vars as they are,
    not found by the packet), and kept where the vars stay the packet's."""
    from odyssey_gevent import deploy
    inst = _instance()
    inst.close_server_later = lambda s: None
    key, vars_ = b"a kept startup packet", {"application_name": "app"}
    plain = Rule(authentication="none", pool="transaction")
    inst.rules = _Rules(plain)
    inst.router = Router(inst)
    first = _routed(plain, inst, vars_, key)
    assert first.vars_key is key
    server = SimpleNamespace(params={"application_name": "app", "work_mem": "4MB"}, deployed=None)
    assert not deploy.needed(first, server) and deploy._LISTS[key] is first.deploy_list
    optioned = Rule(authentication="none", pool="transaction", options={"work_mem": "1MB"})
    inst.rules = _Rules(optioned)
    second = _routed(optioned, inst, vars_, key)
    assert second.vars_key is None and second.vars["work_mem"] == "1MB"
    server.deployed = None
    assert deploy.needed(second, server)            # the option's value is not on the server
    added = Rule(authentication="none", pool="transaction", application_name_add_host=True)
    inst.rules = _Rules(added)
    third = _routed(added, inst, vars_, key)
    assert third.vars_key is None and third.vars["application_name"] == "app - 10.1.2.3"
    unix = _routed(added, inst, vars_, key, peer=None)     # nothing to add: the packet's vars
    assert unix.vars_key is key


def test_setup_block_follows_the_vars_not_a_stale_key(in_machine):
    """Two clients of one route sent the same startup packet; application_name_add_host changed
    the second one's vars (a TCP client; the first came by a unix socket): setup gives each its
    own application_name, not the block the first one's key keeps."""
    from odyssey_gevent import auth
    from odyssey_gevent.route import Route

    rule = Rule(db_name="d", user_name="u", pool="transaction", application_name_add_host=True)
    route = Route(("d", "u", 1), rule, "d", "u")
    route.params = [("server_version", "16.0"), ("application_name", "")]
    inst = _instance()
    inst.close_server_later = lambda s: None
    inst.rules = _Rules(rule)
    inst.router = Router(inst)
    key = b"the same packet"

    def login(peer):
        client = _routed(rule, inst, {"application_name": "app"}, key, peer)
        a, b = gsocket.socketpair()
        app, pooler = mm.Io(a), mm.Io(b)
        try:
            client.io, client.route = pooler, route
            fe = Frontend(inst, client)
            fe.owed = auth.AUTH_OK_MESSAGE
            fe.setup()
            pooler.close()
            return _all(app)
        finally:
            app.close(), pooler.close()

    def body():
        first, second = login(None), login(("10.1.2.3", 5000))
        assert be_write.parameter_status("application_name", "app") in first
        assert be_write.parameter_status("application_name", "app - 10.1.2.3") in second
        return True

    assert in_machine(body)


def _all(io) -> bytes:
    out, buf = bytearray(), bytearray(4096)
    while True:
        n = io.read_into(buf, 1000)
        if not n:
            return bytes(out)
        out += buf[:n]


def test_a_parameter_status_drops_the_vars_key():
    """A ParameterStatus the relay records (a SET's new value) changes the client's vars: the
    vars_key is dropped with the deploy list, so the next server's check uses the new value."""
    from odyssey_gevent import deploy
    from odyssey_gevent.relay import Relay
    client = Client(None)
    key = b"another kept startup packet"
    client.vars, client.vars_key = {"application_name": "app"}, key
    server = SimpleNamespace(params={"application_name": "app"}, deployed=None)
    assert not deploy.needed(client, server)
    msg = b"application_name\0set later\0"
    Relay._parameter_status(SimpleNamespace(client=client), server, msg, 0, len(msg))
    assert client.vars_key is None and client.vars["application_name"] == "set later"
    other = SimpleNamespace(params={"application_name": "app"}, deployed=None)
    assert deploy.needed(client, other)
