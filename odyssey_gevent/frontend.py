"""The client lifecycle in six stages: startup, cancel, routing, authentication, the request
loop and cleanup (mirrors Odyssey sources/frontend.c).

Each stage returns or raises (the error model is written in status.py); `run` turns how the
session ended into a `Status`, and `cleanup()` alone decides what the client is told and whether
its server is reset and reused or closed.
"""
from __future__ import annotations

import struct
import time
from os import read as _read, write as _write

import machinarium
from kiwi import be_write, error_codes
from kiwi.header import BE
from kiwi.be_read import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage, startup_length
from kiwi.be_read import read_startup as read_startup_bytes
from kiwi.be_read import _MIN_STARTUP, MAX_STARTUP_PACKET_LENGTH as _MAX_STARTUP
from kiwi.header import LENGTH as _LENGTH
from kiwi.errors import KiwiError, ProtocolError
from odyssey_gevent import (auth, backend, cancel, deploy, hba, login_retry, replication, reset, soft_oom, storage,
                            tsa, watchdog)
from odyssey_gevent.client import Client
from odyssey_gevent import client as _client_module
from odyssey_gevent.client import _UNDEF as _CLIENT_UNDEF, _draw as _client_draw
from odyssey_gevent.io import read_startup
from odyssey_gevent.prepared import Prepared
from odyssey_gevent.relay import new_relay
from odyssey_gevent.router import AttachTimeout
from odyssey_gevent.server import attach_check_failed, park, unwatch
from odyssey_gevent.status import BackendError, ClientGone, FrontendError, ServerError, Status, error_message

# assigned, not imported: 3.11 compiles a method call on a name an import statement binds as an
# attribute load and a call (a bound method made per call, LOAD_ATTR unspecialized) instead of
# LOAD_METHOD (see relay's _BATCHES); _CLIENT_RANDOM.pop runs once per login
_CLIENT_RANDOM = _client_module._RANDOM

_TX_IDLE = reset._TX_IDLE               # detach_now's copy of reset.settled
_COPY_PHASES = reset._COPY_PHASES
# startup parameters that are not session parameters to maintain
_NOT_VARS = {"user", "database", "options", "replication"}

_DROP_MESSAGES = {
    Status.EIDLE_TIMEOUT: "Connection was dropped by Odyssey due to idle timeout",
    Status.EIDLE_IN_TRANSACTION_TIMEOUT: "Connection was dropped by Odyssey due to idle in transaction timeout",
    Status.EIDLE_IN_REQUEST_TIMEOUT: "Connection was dropped by Odyssey due to idle in the middle of a request "
                                     "timeout (pool_idle_in_request_timeout_ms)",
}
# what a client closed by KILL_CLIENT is told (C's text: FATAL 08006 with this detail and hint)
KILLED_DETAIL = "Connection was killed by Odyssey configuration reloading or console command"
# what a client closed by the graceful shutdown is told (FATAL 57P01, as PostgreSQL's own
# "terminating connection due to administrator command")
SHUTDOWN_MESSAGE = "Odyssey is shutting down: the connection is closed"
RESTART_DETAIL = "The pooler is restarting online: a new process serves new connections"
# what the client is told when its server failed (libpq's words; the OS error goes to the log)
_SERVER_ERRORS = {
    Status.ESERVER_READ: "could not receive data from server",
    Status.ESERVER_WRITE: "could not send data to server",
}


# session_vars' results by the startup parameters' items (bounded: cleared when full)
_VARS: dict[tuple, dict] = {}
_VARS_MAX = 1024


# what Frontend.startup works out from a plain 3.0 StartupMessage alone, by the packet's bytes:
# (the message, user, database, the session vars, the bytes the entry is kept by: the client's
# vars_key). Bounded: at most _STARTUPS_MAX packets of at most _STARTUP_MAX_BYTES, cleared when
# full; each client gets its own copy of the vars
_STARTUPS: dict[bytes, tuple] = {}
_STARTUPS_MAX = 1024
_STARTUP_MAX_BYTES = 1032
_TLS_REQUIRED = ("require", "verify_ca", "verify_full")
_unpack_length = _LENGTH.unpack_from        # (bound once: a method load of a Struct is not specialized)


def session_vars(params: dict) -> dict[str, str]:
    """A new dict of the client's session parameters from its startup parameters, keyed by
    lower-case name as PostgreSQL compares GUC names (the `options` -c pairs after the others).
    Pure, and most logins of a pooler send the same few parameters: each distinct set is worked
    out once and kept by its items (one tuple() and one lookup; the comprehension over the
    names cost about 40 bytecodes a login), the client gets a copy to change."""
    key = tuple(params.items())
    vars_ = _VARS.get(key)
    if vars_ is None:
        vars_ = {k.lower(): v for k, v in params.items() if k not in _NOT_VARS and not k.startswith("_pq_.")}
        if "options" in params:
            vars_.update((k.lower(), v) for k, v in parse_options(params["options"]).items())
        if len(_VARS) >= _VARS_MAX:
            _VARS.clear()
        _VARS[key] = vars_
    return vars_.copy()


def parse_options(value: str) -> dict[str, str]:
    """`-c k=v` and `--k=v` pairs of the startup `options` parameter (PGOPTIONS)."""
    out: dict[str, str] = {}
    tokens, cur, esc = [], [], False
    for ch in value:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch.isspace():
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        pair = None
        if tok == "-c" and i + 1 < len(tokens):
            pair = tokens[i + 1]
            i += 1
        elif tok.startswith("-c"):
            pair = tok[2:]
        elif tok.startswith("--"):
            pair = tok[2:]
        if pair and "=" in pair:
            k, v = pair.split("=", 1)
            out[k.replace("-", "_")] = v
        i += 1
    return out


def param_wire(route) -> tuple:
    """The route's ParameterStatus messages, encoded once (each login sends them, with the
    client's own value where it has one): (messages, {lower-case name: (index, name, value)},
    the messages joined, {the client's own values: the messages joined with them}), kept on the
    route with the params they were made from."""
    cached = getattr(route, "params_wire", None)
    params = route.params
    if cached is None or cached[0] is not params:
        wires = [be_write.parameter_status(name, value) for name, value in params]
        index = {name.lower(): (i, name, value) for i, (name, value) in enumerate(params)}
        cached = route.params_wire = (params, wires, index, b"".join(wires), {})
    return cached[1:]


# how many sets of a client's own values a route keeps its ParameterStatus block for
_OWN_BLOCKS = 64


_READY_IDLE = be_write.ready_for_query(b"I")
# BackendKeyData as be_write.backend_key_data makes it (setup packs it inline)
_BACKEND_KEY = struct.Struct("!BIII")
_K_BACKEND_KEY = BE.BACKEND_KEY_DATA.value


def _login_facts(rule, instance) -> tuple:
    """(a console client, a NOTICE of the host at each attach, the fast detach's plain case) for
    every client of a rule's route (Route.login_facts): fixed for the rule and the instance."""
    storage_ = rule.storage
    return (storage_ is not None and storage_.is_local,
            storage_ is not None and storage_.balancing.show_notice_messages,
            not reset.rule_resets(rule) and not rule.shared_pool and instance.workers <= 1)
# the usual ends of a session, as module constants (loading an Enum member costs about 800
# instructions in 3.11)
_OK, _TERMINATE = Status.OK, Status.TERMINATE
_new = object.__new__


class Frontend:
    def __init__(self, instance, client: Client):
        self.instance = instance
        self.client = client
        self.logger = instance.logger
        self.deadline = None
        self.replication = None          # "true"/"database": a replication connection (replication.py)
        self.replication_server = None
        # AuthenticationOk not yet sent: it goes out with the login's next bytes (ParameterStatus
        # ... ReadyForQuery, or an error), one send instead of two; before the close at the latest
        self.owed = None
        self.head = None                 # the startup packet's first bytes if the accept read them
        # the fast attach (attach_now) needs no host check (tsa) and no NOTICE: worked out in
        # route(), as both are fixed for the session
        self.attach_plain = False
        # the fast detach (detach_now): a rule that resets no server (reset.rule_resets), no
        # shared pool, one worker (nothing to park): worked out in route(), as all are fixed
        self.detach_plain = False

    # -- stage 1: startup ----------------------------------------------------------------------
    def _login_timeout(self) -> int | None:
        if self.deadline is None:
            return None
        left = int((self.deadline - time.monotonic()) * 1000)
        return left if left > 0 else 0      # not max(): a builtin that parses keywords

    def startup(self) -> bool:
        """Read the first packet(s). False when the connection is done (cancel request)."""
        client = self.client
        listen = client.listen
        head = self.head
        while True:
            msg = packet = None
            if head is not None and len(head) >= 4:
                # the packet's first bytes the accept read (up to 8: no first packet is shorter,
                # an SSLRequest or GSSENCRequest is all of it); the rest is usually there too (a
                # client sends its packet in one write), read by one recv that never waits,
                # without the frames of read_startup, Io.read and the login timeout's (about
                # 3,000 instructions)
                # its length word (startup_length's steps without its frame; a bad one is
                # refused before the body, with startup_length's error)
                declared = _unpack_length(head)[0]
                if declared < _MIN_STARTUP or declared - 4 > _MAX_STARTUP:
                    startup_length(head)            # (raises)
                need = declared - len(head)         # (declared >= 8 >= len(head))
                if need:
                    try:
                        body = _read(client.io._raw.fileno(), need)      # (os.read: see worker._spawn)
                    except BlockingIOError:
                        body = b""
                    head += body
                    need -= len(body)
                if not need:
                    kept = _STARTUPS.get(head)
                    if kept is not None:
                        # a packet seen before (a pooler's clients mostly send the same few):
                        # what startup works out from it alone is kept by its bytes, without
                        # the reader's frame, the checks and the vars' lookup (below)
                        self.head = None
                        if listen is not None and listen.tls in _TLS_REQUIRED and not client.tls:
                            raise FrontendError(error_codes.PROTOCOL_VIOLATION, "SSL is required")
                        # (the message is shared: nothing changes a client's startup message)
                        client.startup, client.user, client.database, vars_, client.vars_key = kept
                        client.vars = vars_.copy()
                        return True
                    packet = head
                    msg = read_startup_bytes(head, declared=declared)[0]
            if msg is None:         # not all there yet (or EOF): read with the login timeout
                msg = read_startup(client.io, self._login_timeout(), head)
                packet = None
            head = self.head = None
            if msg.__class__ is StartupMessage:      # the usual first packet: one test
                break
            if isinstance(msg, SSLRequest):
                if client.tls:
                    raise FrontendError(error_codes.PROTOCOL_VIOLATION,
                                        "SSLRequest on a connection that is already encrypted", severity="FATAL")
                if listen is not None and listen.tls != "disable" and self.instance.tls_context(listen):
                    client.io.write(b"S")
                    client.io.tls_server(self.instance.tls_context(listen), self._login_timeout())
                    client.tls = True
                else:
                    client.io.write(b"N")
                continue
            if isinstance(msg, GSSENCRequest):
                client.io.write(b"N")
                continue
            if isinstance(msg, CancelRequest):
                cancel.forward(self.instance, msg.pid, msg.key)
                # end it as PostgreSQL does, with a FIN: libpq 17+ (PQcancelBlocking, psycopg 3's
                # cancel_safe) reports a reset here as a failed cancel
                try:
                    client.io.set_linger_off()
                except OSError:
                    pass
                return False
            break
        if listen is not None and listen.tls in _TLS_REQUIRED and not client.tls:
            raise FrontendError(error_codes.PROTOCOL_VIOLATION, "SSL is required")
        major, minor, params = msg      # (a tuple: one unpack, not three property reads)
        if major != 3:
            raise FrontendError(error_codes.FEATURE_NOT_SUPPORTED,
                                f"unsupported frontend protocol {major}.{minor}: "
                                f"server supports 3.0 to 3.0", severity="FATAL")
        client.startup = msg
        user = params.get("user")
        if not user:
            raise FrontendError(error_codes.INVALID_AUTHORIZATION_SPECIFICATION,
                                "no PostgreSQL user name specified in startup packet", severity="FATAL")
        client.user = user
        client.database = params.get("database") or user
        if "replication" in params:
            self.replication = replication.mode(params["replication"])
        if minor > 0:
            unknown = [k for k in params if k.startswith("_pq_.")]
            client.io.write(be_write.negotiate_protocol_version(0, unknown))
        # session_vars' usual case inline (a frame fewer per login): these parameters seen before
        vars_ = _VARS.get(tuple(params.items()))
        client.vars = vars_.copy() if vars_ is not None else session_vars(params)
        if packet.__class__ is bytes and not minor and self.replication is None and len(packet) <= _STARTUP_MAX_BYTES:
            # a plain StartupMessage read whole from its bytes: kept by them (the next client
            # that sends the same gets the same without the work above)
            if len(_STARTUPS) >= _STARTUPS_MAX:
                _STARTUPS.clear()
            _STARTUPS[packet] = (msg, user, client.database, dict(client.vars), packet)
            client.vars_key = packet
        return True

    # -- stage 3: routing ----------------------------------------------------------------------
    def route(self) -> None:
        client = self.client
        route = self.instance.router.route(client)
        rule = client.rule
        # what the rule and the instance decide for every client of the route, worked out once
        facts = route.login_facts
        if facts is None:
            facts = route.login_facts = _login_facts(rule, self.instance)
        client.is_console, notice, self.detach_plain = facts
        # the rule's options {} override the client's own values
        if rule.options:
            client.vars_key = None          # (the vars are no longer the startup packet's)
            for k, v in rule.options.items():
                client.vars[k.lower()] = v
        if rule.application_name_add_host and client.peer_host:
            client.vars_key = None
            app = client.vars.get("application_name", "")
            client.vars["application_name"] = (f"{app} - {client.peer_host}")[:63]
        # tsa.checks_hosts inline (a frame fewer per login): a catchup_timeout, or a
        # target_session_attrs other than any, has each idle server's host checked
        checks = client.tsa_checks
        if checks is None:
            # tsa.work_out's usual case inline (another frame): a client without startup hints
            # gets the checks its route keeps for this listen block
            memo = route.tsa_memo
            vars_ = client.vars
            if memo is not None and memo[0] is client.listen and tsa.HINT not in vars_ \
                    and tsa.CATCHUP_HINT not in vars_:
                checks = client.tsa_checks = memo[1]
            else:
                checks = tsa.work_out(client)
        # (nested: 3.11 specializes a comparison only when a conditional jump follows it at once)
        plain = False
        if not checks[0] and not notice:
            if checks[1] == "any":
                plain = True
        self.attach_plain = plain

    # -- stage 3b: host based authentication (hba_file) --------------------------------------
    def check_hba(self) -> None:
        config = self.instance.config
        if config.hba_file is None:
            return
        client = self.client
        # as C Odyssey: the routing rule's names (default_db/default_user for default rules)
        rule = client.rule
        if hba.check(config.hba_rules or [], client.conn_type, client.tls, client.peer_host,
                     rule.db_name, rule.user_name):
            return
        self.logger.error("auth", client, None, "ip '%s' user '%s.%s': host based authentication rejected",
                          client.peer_host or "[unix socket]", client.database, client.user)
        raise FrontendError(error_codes.INVALID_PASSWORD, "host based authentication rejected")

    # -- stage 4: authentication (in run: auth.authenticate_client, AuthenticationOk owed) -----
    def _pay_owed(self) -> None:
        owed = self.owed
        if owed is not None:
            self.owed = None
            self.client.io.write(owed)

    # -- login completion: ParameterStatus, BackendKeyData, ReadyForQuery ------------------
    def setup(self) -> None:
        client = self.client
        if self.replication is not None and not client.is_console:
            self._pay_owed()
            replication.setup(self)
            return
        if client.is_console:
            from odyssey_gevent import console
            params = console.login_parameters(self.instance)
            out = [self.owed or b""]
            self.owed = None
            out += [be_write.parameter_status(k, v) for k, v in params]
            out.append(be_write.ready_for_query(b"I"))
            client.io.write(b"".join(out))
            return
        route = client.route
        if client.rule.pool == "session" and client.rule.reserve_session_server_connection:
            # the client keeps one server for life: attach it now, so that BackendKeyData carries
            # that server's real pid (pg_backend_pid(), NOTIFY pids and the driver agree)
            self._pay_owed()            # before a NOTICE the attach may send (show_notice_messages)
            server = self.attach()
            if route.params is None:
                route.params = list(server.login_params)
            self.instance.router.rekey(client, server.key_pid)
        elif route.params is None:
            # the first client of a route logs a server in to learn the route's parameters
            self.attach(deploy_params=False)
            route.params = list(client.server.login_params)
            self.detach(reset_first=False)
        owed = self.owed or b""
        self.owed = None
        # the route's messages joined once; the client's values that differ (a few vars, where
        # the route has about fifteen parameters; usually the same ones for every client of an
        # application, such as its application_name) select a block made with them and kept
        cached = route.params_wire
        if cached is None or cached[0] is not route.params:
            cached = (None, *param_wire(route))
        _, wires, index, block, own = cached
        # `own` also keeps the block by the client's vars as they are: by the startup packet's
        # kept bytes while the vars are that packet's (client.vars_key: its hash cached, found
        # by identity), else by a tuple of their pairs (neither ever equal to a flat tuple of
        # the differing values): a client with the same vars as an earlier one needs no walk
        items = client.vars_key
        if items is None:
            items = tuple(client.vars.items())
        found = own.get(items)
        if found is not None:
            block = found
        else:
            mine = None
            for key, value in client.vars.items():
                known = index.get(key)
                if known is not None and known[2] != value:
                    if mine is None:
                        mine = [key, value]
                    else:
                        mine += (key, value)
            if mine is not None:
                mine = tuple(mine)
                found = own.get(mine)
                if found is None:
                    copy = list(wires)
                    for i in range(0, len(mine), 2):
                        n, name, _ = index[mine[i]]
                        copy[n] = be_write.parameter_status(name, mine[i + 1])
                    found = b"".join(copy)
                    if len(own) >= _OWN_BLOCKS:
                        own.clear()
                    own[mine] = found
                block = found
            if len(own) >= _OWN_BLOCKS:
                own.clear()
            own[items] = block
        # be_write.backend_key_data and Io.write's usual case (the socket takes it all) inline:
        # two frames fewer per login
        try:
            # (a client's own key fits as it is; the masks, two unspecialized operations, only
            # for a pid given by a server: rekey)
            key = _BACKEND_KEY.pack(_K_BACKEND_KEY, 12, client.key_pid, client.key_secret)
        except struct.error:
            key = _BACKEND_KEY.pack(_K_BACKEND_KEY, 12, client.key_pid & 0xFFFFFFFF, client.key_secret & 0xFFFFFFFF)
        data = b"".join((owed, block, key, _READY_IDLE))
        io = client.io
        if io._tls:
            io.write(data)
        else:
            try:
                n = _write(io._raw.fileno(), data)      # (os.write: see relay._on_client)
            except BlockingIOError:
                n = 0
            if n != len(data):
                io.write(memoryview(data)[n:])      # the rest, waiting as Io.write does

    # -- attach / detach (called by the relay) ----------------------------------------------
    def attach(self, deploy_params: bool = True, taken=None, queued: bool = False):
        """Attach a server to the client (waiting in the route's queue, connecting a new one);
        `taken`: a server the relay's fast path took already (attach_now), to check first;
        `queued`: the fast path queued the client already (queue_now), the wait goes on."""
        instance = self.instance
        client = self.client
        rule = client.rule
        timeout = rule.pool_timeout if rule.pool_timeout > 0 else None
        retry_until = None        # failed logins tried again within pool_timeout (login_retry.py)
        while True:
            try:
                if taken is not None:
                    server, taken = taken, None
                elif queued:
                    queued = False
                    server = instance.router.attach_queued(client, timeout)
                else:
                    server = instance.router.attach(client, timeout if retry_until is None else retry_until.left_ms())
            except AttachTimeout:
                if client.killed:
                    raise ClientGone(Status.ECLIENT_KILLED, "killed while waiting for a server") from None
                if retry_until is not None:
                    login_retry.give_up(client, retry_until)
                raise FrontendError(error_codes.TOO_MANY_CONNECTIONS,
                                    f"too many active clients for user (pool_size for user "
                                    f"{client.database}.{client.user} reached {rule.pool_size})",
                                    severity="FATAL", status=Status.EATTACH_TOO_MANY_CONNECTIONS) from None
            if server.io is None and server.fd is None:      # not connected yet
                try:
                    self._connect(server)
                except login_retry.Retry as retry:
                    retry_until = login_retry.pause(instance, client, retry, server.id, retry_until)
                    continue
                break
            if server.io is None:
                server.io = machinarium.Io.attach(server.fd)
                server.fd = None
            else:
                unwatch(instance, server, server.io)      # pooled by the fast path with its watcher started
            if rule.pool_attach_check and server.io.readable_now():
                # an idle server that has something to say was closed or terminated meanwhile
                self.logger.info("attach", client, server, "idle server connection is broken, closing it")
                self._drop_server(server, broken=True)
                continue
            if not tsa.idle_server_fits(instance, client, server):
                self._drop_server(server, broken=server.broken)
                continue
            break
        if deploy_params and rule.maintain_params:
            try:
                deploy.deploy(instance, client, server)
            except (OSError, machinarium.TimedOut, KiwiError) as e:
                raise ServerError(Status.ESERVER_WRITE, e) from None
        if deploy_params and rule.storage is not None and rule.storage.balancing.show_notice_messages:
            storage.notice_host(instance, client, server)
        return server

    def attach_now(self):
        """The attach of the relay's fast path, run in the hub where nothing may wait: an idle,
        connected server of the route when there is one now, checked as attach() checks it
        when that needs no IO. None: nothing was taken (the relay's coroutine attaches as
        usual); False: a server was taken (client.server) but a check or a deploy needs a
        round trip, which the coroutine does with attach(taken=client.server). The relay's
        client callback has its one-worker plain case inline (Relay._on_client, kept in step by
        test_frontend_fast) and calls this for the rest: more workers (the router's lock), a
        host check or NOTICE due, an offline server or a paused route."""
        client = self.client
        if not client.route.idle:
            # no idle server: no lock round (once per queued transaction; as short as it can be).
            # A read outside the router's lock: a server another worker pools meanwhile makes
            # queue_now (under the lock) leave the attach to the coroutine, which finds it
            return None
        server = self.instance.router.attach_idle(client)
        if server is None:
            return None
        return self.ready_now(server)

    def queue_now(self, client, cont, loop, ident):
        """The fast path's attach for this frontend's `client` when attach_now found no idle
        server (router.queue_now): a new server to connect (the coroutine does), False (the
        coroutine attaches as usual), or None: queued, `cont` runs in the hub when a server is
        handed over (see ready_now). The first call keeps router.queue_now, a bound method, in
        an instance attribute that shadows this method, so the relay's later calls (once per
        queued transaction) run no Python frame of their own. The relay passes the client: 3.11
        inlines the call of a bound Python method, while a functools.partial binding the client
        is called through C (about 380 instructions more per call)."""
        bound = self.queue_now = self.instance.router.queue_now
        return bound(client, cont, loop, ident)

    def leave_queue(self) -> None:
        """The relay's coroutine ended while queued by queue_now (router.leave_queue)."""
        self.instance.router.leave_queue(self.client)

    def ready_now(self, server):
        """The linked `server` when it can serve the client without any IO first (connected,
        no attach check, deploy or notice due), else False (attach(taken=server) does that):
        attach_now's checks for an idle server, also run for a server handed over to a client
        queued by queue_now."""
        client = self.client
        io = server.io
        if io is None:
            if server.fd is None:
                return False
            io = server.io = machinarium.Io.attach(server.fd)
            server.fd = None
        rule = client.rule
        if io._tls:
            return False
        if rule.pool_attach_check and attach_check_failed(self.instance, server, io):
            return False
        if not self.attach_plain:
            if server.endpoint is not None and not tsa.idle_server_fits_now(client, server):
                return False
            if rule.storage is not None and rule.storage.balancing.show_notice_messages:
                return False
        if rule.maintain_params:
            todo = client.deploy_list       # deploy.needed's common case first (see attach_now)
            if (todo is None or server.deployed is not todo) and deploy.needed(client, server):
                return False
        return server

    def detach_now(self, clean: bool | None = None) -> bool:
        """The detach of the relay's fast path (in the hub): done when reset.quick() decides
        the server and pooling it closes nothing; False: the coroutine must detach().
        `clean`: the relay's server_clean when the caller knows it. The reply walk calls
        detach_walked, which leaves out the tests the walk has just made."""
        client = self.client
        server = client.server
        if clean is None:
            relay = client.relay
            clean = relay is None or relay.server_clean
        # the tests of reset.settled the reply walk makes before its detach_walked call
        # (reset.quick is False for a server not clean, whatever the rule)
        if not (clean and server.proto.syncs == 0 and not server.broken):
            return False
        return self.detach_walked()

    def detach_walked(self) -> bool:
        """detach_now(True) for the relay's reply walk, which calls it only where it has just
        found the server clean (server_clean), owing nothing (no syncs) and not broken: those
        tests are not made again (test_frontend_fast holds this to reset.quick in every state
        the walk lets through). The walk does the plain case's common steps itself (router.detach's
        two common cases, Relay._server_data: kept in step by test_frontend_fast) and calls this
        for the rest, so its plain case is router.detach's."""
        client = self.client
        server = client.server
        if self.detach_plain:           # reset.quick's rule half, the shared pool and parking
            # the rest of reset.settled (tests/odyssey_gevent/test_frontend_fast.py keeps the two
            # in step)
            proto = server.proto
            txs = proto.tx_status
            if not ((txs is _TX_IDLE or txs == _TX_IDLE) and not proto.output and not server.cancels
                    and not server.drop and server.io is not None and proto.phase not in _COPY_PHASES):
                return False
            route = server.route
            if server.offline or route.obsolete:
                return False
        else:
            if not reset.quick(server, True):
                return False
            route = server.route
            if server.offline or route.obsolete or route.rule.shared_pool:
                return False
            instance = self.instance
            if instance.workers > 1 and not park(server, instance.workers):
                return False
        if server.deployed is not client.deploy_list:
            server.deployed = None      # the relay wrote params (ParameterStatus): see Server
        self.instance.router.detach(client)
        return True

    def _connect(self, server) -> None:
        """Log a new server in for this client's route; on failure free its slot and raise the
        FrontendError the client gets (the backend's own error with client_fwd_error)."""
        instance = self.instance
        client = self.client
        try:
            backend.connect(instance, server, client)
        except backend.TsaMismatch as e:
            self.logger.error("attach", client, server, "%s", e)
            self._drop_server(server, broken=True)
            raise FrontendError(error_codes.CONNECTION_FAILURE,
                                f"can't find suitable host for tsa '{e.value}' of user "
                                f"{client.database}.{client.user}", severity="FATAL",
                                status=Status.EATTACH_TARGET_SESSION_ATTRS_MISMATCH) from None
        except (BackendError, OSError, machinarium.TimedOut, KiwiError) as e:
            self.logger.error("attach", client, server, "failed to connect to the server: %s", e)
            self._drop_server(server, broken=True)
            fields = getattr(e, "fields", None)
            retry = login_retry.retry_for(client.rule, e)
            if retry is not None:
                raise retry from None
            if client.rule.client_fwd_error and fields is not None:
                raise FrontendError(fields.sqlstate, fields.message, severity=fields.severity,
                                    detail=fields.detail, hint=fields.hint, status=Status.ESERVER_CONNECT) from None
            raise FrontendError(error_codes.CONNECTION_FAILURE, f"failed to connect to remote server {server.id}",
                                severity="FATAL", status=Status.ESERVER_CONNECT) from None
        self.logger.debug("attach", client, server, "new server connection")

    def detach(self, reset_first: bool = True) -> None:
        client = self.client
        server = client.server
        if server is None:
            return
        instance = self.instance
        clean = client.relay is None or client.relay.server_clean
        ok = reset.reset(instance, server, clean) if reset_first else clean
        if ok and (instance.workers <= 1 or park(server, instance.workers)):     # one worker: nothing to park
            if server.deployed is not client.deploy_list:
                server.deployed = None      # the relay wrote params (ParameterStatus): see Server
            instance.router.detach(client)
        else:
            self._drop_server(server)

    def _drop_server(self, server, broken: bool = False) -> None:
        """Take the client's server out of the pool (its slot goes to the next waiter) and close
        it; `broken` skips the polite Terminate."""
        if broken:
            server.broken = True
        self.instance.router.close(self.client)
        backend.close(self.instance, server)

    # -- idle timeouts (called by the relay) -----------------------------------------------
    def idle_timeout(self, server) -> int | None:
        if server is None:
            return None
        rule = self.client.rule
        if server.in_transaction:
            t = rule.pool_idle_in_transaction_timeout
        elif rule.pool == "session":
            t = rule.pool_client_idle_timeout
        else:
            t = 0
        return t * 1000 if t > 0 else None

    def idle_expired(self, server) -> Status | None:
        if server is None:
            return None
        if server.in_transaction:
            self.logger.info("shutdown", self.client, server,
                             "drop idle in transaction connection on due timeout %d sec",
                             self.client.rule.pool_idle_in_transaction_timeout)
            return Status.EIDLE_IN_TRANSACTION_TIMEOUT
        self.logger.info("shutdown", self.client, server, "drop idle client connection on due timeout %d sec",
                         self.client.rule.pool_client_idle_timeout)
        return Status.EIDLE_TIMEOUT

    def request_expired(self, server) -> Status:
        """pool_idle_in_request_timeout_ms passed with the client silent in the middle of a
        request (an extended batch without Sync, a half-sent message, COPY data) while it holds
        a server that waits for it: the client is dropped and the unfinished server closed."""
        self.logger.info("shutdown", self.client, server,
                         "drop client idle in the middle of a request on due timeout %d ms",
                         self.client.rule.pool_idle_in_request_timeout_ms)
        return Status.EIDLE_IN_REQUEST_TIMEOUT

    # -- graceful shutdown (called by the relay) ------------------------------------------
    def can_stop(self, server) -> bool:
        """While shutting down: may the client be closed now? Yes when it holds no server, or
        its server is idle outside a transaction with nothing half relayed (it can be reset and
        pooled), and during an online restart drain when conn_drop_options lets one more go
        (Instance.may_eject); always once graceful_shutdown_timeout_ms has passed."""
        instance = self.instance
        if instance.shutdown_force:
            return True
        if server is not None:
            relay = self.client.relay
            if not (server.synchronized and not server.in_transaction and (relay is None or relay.server_clean)):
                return False
        return instance.may_eject()

    # -- the whole lifecycle ----------------------------------------------------------------
    def run(self, resumed: bool = False, deadline=None) -> None:
        """The session; `deadline` (time.monotonic) ends the login, None: client_login_timeout
        from now (0 = none)."""
        client = self.client
        instance = self.instance
        status = _OK
        if not resumed:
            if deadline is None:
                deadline = login_deadline(client.listen)
            self.deadline = deadline or None
        try:
            if resumed:                 # a dormant relay's client spoke (see resume)
                status = client.relay.run()
                return
            if not self.startup():
                return
            log_session = instance.config.log_session
            if log_session:
                self.logger.info("startup", client, None, "new client connection %s", self._peer())
            self.route()
            if log_session:
                self.logger.info("routing", client, None, "route '%s.%s' to '%s.%s'", client.database,
                                 client.user, client.rule.db_name, client.rule.user_name)
            config = instance.config
            if config.hba_file is not None:     # (check_hba's own first test, without its call)
                self.check_hba()
            checks = client.tsa_checks          # (worked out by route(): a catchup_timeout to check?)
            if checks is None or checks[0] > 0:
                watchdog.check_catchup(instance, client)
            # stage 4, authentication, here (its own method's frame cost each login): "none" asks
            # nothing (authenticate_client's steps for it are all no-ops)
            if client.rule.authentication != "none":
                auth.authenticate_client(instance, client, self._login_timeout(), False)     # (send_ok: positional, see frontend())
            self.owed = auth.AUTH_OK_MESSAGE
            if config.soft_oom.enabled:         # (refuse_if_over's first test)
                soft_oom.refuse_if_over(instance, client)
            self.deadline = None
            self.setup()
            if log_session:
                rule = client.rule
                self.logger.info("setup", client, None, "login time: %d microseconds",
                                 int((time.monotonic() - client.time_accept) * 1e6))
                self.logger.info("setup", client, None, "client connection from %s to route %s.%s accepted",
                                 self._peer(), rule.db_name, rule.user_name)
            if self.replication is not None and not client.is_console:
                status = replication.relay(self)
            elif client.is_console:
                from odyssey_gevent import console
                status = console.run(instance, client)
            else:
                rule = client.rule
                prepared = None
                # (Rule.effective_reserve_prepared_statement, without its call)
                if rule.pool != "session" and rule.pool_reserve_prepared_statement:
                    prepared = Prepared(client, client.route.prepared)
                relay = client.relay = new_relay(self, client, prepared)     # (Relay(...) without the class call)
                status = relay.run()
        except FrontendError as e:
            status = e.status or (Status.ECLIENT_PROTOCOL_ERROR if e.sqlstate == error_codes.PROTOCOL_VIOLATION
                                  else Status.OK)
            self._send_error(e)
        except ServerError as e:
            self.logger.error("main", client, client.server,
                              "server disconnected (read/write error): %s, status %s", e.cause, e.status.value)
            status = e.status
        except ClientGone as e:
            status = e.status
        except ProtocolError as e:
            self.logger.error("startup", client, None, "protocol error: %s", e)
            self._send_error(FrontendError(error_codes.PROTOCOL_VIOLATION, "bad startup packet" if
                                           client.startup is None else str(e), severity="FATAL"))
            status = Status.ECLIENT_PROTOCOL_ERROR
        except machinarium.TimedOut:
            self.logger.info("startup", client, None, "client login timed out")
            status = Status.ECLIENT_READ
        except (OSError, machinarium.ConnectionClosed):
            status = Status.ECLIENT_READ
        finally:
            if status is not None:      # None: the relay went dormant, the session goes on
                self.cleanup(status)

    def resume(self) -> None:
        """The coroutine of a dormant client (an idle client without a server gives its own up
        after relay.DORMANT_AFTER_MS): started by its socket's read watcher when it speaks or
        closes, or when it is woken (KILL_CLIENT, shutdown)."""
        self.run(resumed=True)

    def _peer(self) -> str:
        client = self.client
        if client.peer_host is None:
            return "[unix socket]"
        return f"{client.peer_host}:{client.peer_port}"

    def _send_error(self, err: FrontendError) -> None:
        client = self.client
        show_id = client.rule.client_show_id if client.rule is not None else True
        relay = client.relay
        if relay is not None and relay.client_mid_message():
            # the server's stream ended (or the session is cut) in the middle of a message the
            # client has part of, as PostgreSQL's own does when a backend dies while sending:
            # an ErrorResponse now would be read as that message's remaining bytes (a corrupt
            # row or COPY line), so the client gets the truncated message and the end of the
            # connection, which every driver reports as a lost connection
            self.logger.error("frontend", client, client.server,
                              "%s (not sent: the client has part of a server message, which an error "
                              "message would corrupt; closing the connection)", err.message)
            try:
                client.io.set_linger_off()      # a FIN: the client reads what it was sent
            except Exception:
                pass
            return
        self.logger.error("frontend", client, client.server, "%s", err.message)
        owed, self.owed = self.owed, None
        try:
            msg = error_message(err, client.id, show_id)
            client.io.write(owed + msg if owed is not None else msg)
            # the connection ends after this: close it with a FIN, not the usual reset, or the
            # kernel may drop the error before the client has read it
            client.io.set_linger_off()
        except Exception:
            pass

    # -- stage 6: cleanup -------------------------------------------------------------------
    def cleanup(self, status: Status) -> None:
        client = self.client
        instance = self.instance
        server = client.server
        # the common ends (Terminate, or OK) count as no error and tell the client nothing: one
        # identity test skips the rest (a Status member load, its .value and a lookup of it in
        # a dict each cost hundreds of instructions in 3.11)
        usual = status is _TERMINATE or status is _OK
        if client.route is not None and not usual:
            instance.router.errors.session_ended(status.value, client.route)
        try:
            if usual:
                pass
            elif status is Status.ECLIENT_KILLED:
                self.logger.info("main", client, server, "client killed by reload or console command")
                self._send_error(FrontendError(error_codes.CONNECTION_FAILURE, "Odyssey has dropped the connection",
                                               severity="FATAL", detail=KILLED_DETAIL, hint="Try to reconnect"))
            elif status in _DROP_MESSAGES:
                self._send_error(FrontendError(error_codes.CONNECTION_FAILURE, "Odyssey has dropped the connection",
                                               severity="FATAL", detail=_DROP_MESSAGES[status]))
            elif status is Status.EGRACEFUL_SHUTDOWN:
                if instance.successor is not None:     # online restart: a new process took over
                    self._send_error(FrontendError(error_codes.ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE, severity="FATAL",
                                                   detail=RESTART_DETAIL, hint="Try to reconnect"))
                else:
                    self._send_error(FrontendError(error_codes.ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE, severity="FATAL"))
            elif status in _SERVER_ERRORS:
                self._send_error(FrontendError(error_codes.CONNECTION_FAILURE,
                                               f"remote server read/write error {server.id if server else ''}: "
                                               f"{_SERVER_ERRORS[status]}"))
            if server is not None:
                if not usual and status in _SERVER_ERRORS:
                    self._drop_server(server, broken=True)
                else:
                    try:
                        self.detach()
                    except Exception as e:  # a reset that fails closes the server
                        self.logger.error("cleanup", client, server, "reset failed: %s", e)
                        if client.server is not None:
                            self._drop_server(server, broken=True)
        finally:
            if client.prepared:
                registry = client.route.prepared
                for stmt in client.prepared.values():
                    registry.release(stmt)
                client.prepared = None
            instance.router.unroute(client)
            if instance.config.log_session and client.rule is not None:
                detail = "" if usual else f", {status.value}"
                self.logger.info("main", client, None, "client disconnected (route %s.%s, working time: %dus%s)",
                                 client.rule.db_name, client.rule.user_name,
                                 int((time.monotonic() - client.time_accept) * 1e6), detail)
            if self.owed is not None:       # a login that ended without another word
                try:
                    self._pay_owed()
                except Exception:
                    pass
            io = client.io
            if io._tls or io._fread is not None:
                io.close()              # close_notify first; or the FileIO the relay made closed
            else:
                io.sock.close()         # Io.close's plain case (a frame fewer per login)
            if instance.workers <= 1:   # Instance.client_closed's one-thread case inline (a frame fewer)
                instance.clients -= 1
            else:
                instance.client_closed()
            # the relay refers to its frontend, which refers to the client: without this edge
            # the ended session is a reference cycle left to the garbage collector, whose
            # collections then ran every few logins (about 25,000 instructions a login); the
            # relay's own bound callbacks are another such cycle (Relay.close)
            relay = client.relay
            if relay is not None:
                relay.on_client = relay.on_handed = None     # (Relay.close's body)
                client.relay = None


def login_deadline(listen):
    """When a login accepted now must be over (time.monotonic), from the listener's
    client_login_timeout (15 s without a listener); 0 when it has none."""
    login_ms = listen.client_login_timeout if listen is not None else 15000
    return time.monotonic() + login_ms / 1000.0 if login_ms > 0 else 0


def frontend(instance, io, listen, conn_type: str, peer=None, local=None, deadline=None, head=None,
             accepted=None) -> None:
    """Coroutine entry point: one client from accept to close (`deadline`: Frontend.run's;
    `head`: the first bytes of its startup packet when already read; `accepted`: when it was
    accepted (time.monotonic) if that was not just now)."""
    # Client(io, listen, conn_type, peer, local) with its __init__ inline, the same slots set
    # (a frame fewer per login; a test compares the two)
    client = _new(Client)
    try:
        client.id, client.key_pid, client.key_secret = _CLIENT_RANDOM.pop()
    except IndexError:
        client.id, client.key_pid, client.key_secret = _client_draw()
    client.io = io
    client.listen = listen
    client.conn_type = conn_type
    client.tls = False
    client.peer_host, client.peer_port = peer if peer else (None, None)
    client._local = local
    client.startup = None
    client.user = None
    client.database = None
    client.vars = {}
    client.rule = None
    client.route = None
    client.server = None
    client.state = _CLIENT_UNDEF
    client.time_accept = time.monotonic() if accepted is None else accepted
    client.password = None
    client.auth_secret = None
    client.scram_keys = None
    client.is_console = False
    client.relay = None
    client.deploy_list = None
    client.prepared = None
    client.killed = False
    client.tsa_checks = None
    client.waiter = None
    client.vars_key = None
    # Frontend(instance, client) with its __init__ inline, the same attributes in the same
    # order (a frame fewer per login; a test compares the two)
    fe = _new(Frontend)
    fe.instance = instance
    fe.client = client
    fe.logger = instance.logger
    fe.deadline = None
    fe.replication = None
    fe.replication_server = None
    fe.owed = None
    fe.head = head
    fe.attach_plain = False
    fe.detach_plain = False
    fe.run(False, deadline)     # (positional: 3.11 specializes no call with keyword arguments)
