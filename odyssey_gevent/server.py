"""A server (backend) connection and its state (mirrors Odyssey sources/server.h), and the one
rule for moving server sockets between machines (`park`).

Which fields the router's lock guards is written in route.py.
"""
from __future__ import annotations

import enum
import time

from kiwi.protocol import Conversation
from odyssey_gevent.id import new_id


class ServerState(enum.Enum):
    """Which list of its route the server is on; changed only by `Route.set_server_state`."""
    UNDEF = "undef"
    IDLE = "idle"
    ACTIVE = "active"


class Server:
    __slots__ = ("id", "route", "io", "fd", "endpoint", "endpoint_host", "state", "client",
                 "key_pid", "key_secret", "params", "proto", "prepared",
                 "created_at", "idle_since", "offline", "broken", "drop", "cancels",
                 "baseline", "login_params", "deployed", "reader", "on_read", "held")

    def __init__(self, route):
        self.id = new_id("s")
        self.route = route
        self.io = None              # machinarium Io while connected
        self.fd = None              # a detached fd while parked between machines
        self.endpoint = None        # odyssey_gevent.config.model.Endpoint it is connected to
        self.endpoint_host = None   # for %H in the log
        self.state = ServerState.UNDEF
        self.client = None
        self.key_pid = 0
        self.key_secret = 0
        self.params: dict[str, str] = {}   # lower-case name -> value (ParameterStatus and what we SET)
        # the deploy list (deploy.py) `params` was last found to hold, None: not known. Whoever
        # writes `params` resets it, except the relay, which resets the client's deploy_list
        # instead: the detach then drops it (Frontend.detach, detach_now)
        self.deployed = None
        self.login_params: list[tuple[str, str]] = []   # ParameterStatus at login, names as sent
        self.proto = Conversation()     # what the server still owes us (kiwi.protocol)
        self.prepared = None        # prepared.ServerStatements once a pooled statement is made here
        self.created_at = time.monotonic()
        self.idle_since = self.created_at
        self.offline = False
        self.broken = False         # an IO error happened: never reuse
        self.drop = False           # close instead of pooling at the next detach (healthy, so Terminate)
        self.cancels = 0            # cancel requests on their way to PostgreSQL for this server
        # cancels, drop or offline (held(server)): the reply walk's inline detach tests this one
        # flag where it tested the three, once per transaction. Kept under the router's lock by
        # their only writers: Router.cancel_target and cancel_done (cancels), drop_servers
        # (offline), the relay's _server_error (drop)
        self.held = False
        self.baseline: dict[str, str] = {}   # parameters right after login (what DISCARD ALL restores)
        # workers 1, the relay's fast path (see "a pooled server's read watcher" below): who
        # reads the server through its read watcher, started with `on_read` (made at the first
        # fast-path attach; one callback for the server's life): the relay it is attached to,
        # the instance while it is pooled with the watcher started (then idle_readable runs),
        # None when no such watch was started. Only the instance value promises a started watcher
        self.reader = None
        self.on_read = None

    def throw(self, *args) -> None:
        """gevent's hub takes a read watcher's callback to be a greenlet's switch: a socket
        closed under a started watcher throws into the callback's __self__, here the server (its
        `on_read`). Passed on to the relay reading it (Relay.throw), as when the callback was
        the relay's own method; a pooled server's reader, the instance, has no throw."""
        throw = getattr(self.reader, "throw", None)
        if throw is not None:
            throw(*args)

    @property
    def connected(self) -> bool:
        return self.io is not None or self.fd is not None

    @property
    def synchronized(self) -> bool:
        return self.proto.syncs == 0

    @property
    def in_transaction(self) -> bool:
        return self.proto.tx_status != b"I"

    @property
    def tx_status(self) -> bytes:
        return self.proto.tx_status

    @property
    def copy_mode(self) -> bool:
        return self.proto.copy_mode

    @property
    def sync_request(self) -> int:
        """Sync/Query/FunctionCall sent that earn a ReadyForQuery (answered or not)."""
        return self.proto.replies + self.proto.syncs

    @property
    def sync_reply(self) -> int:
        return self.proto.replies

    def __repr__(self) -> str:
        return f"<Server {self.id} {self.state.value}>"


def held(server: Server) -> bool:
    """What Server.held stands for: a cancel on its way to the server, or the server to be
    closed at its next detach (drop, offline): not to be pooled as it is."""
    return server.cancels > 0 or server.drop or server.offline


def movable(tls: bool, workers: int) -> bool:
    """The one rule for server sockets and machines. With one machine (workers 1) nothing moves.
    With workers > 1 a pooled server belongs to no machine: it is parked as a bare fd and
    re-attached by whichever machine's client takes it next. A TLS connection cannot do that
    (its state lives in an SSLObject of the machine that made it), so it is never pooled there."""
    return workers <= 1 or not tls


def park(server: Server, workers: int) -> bool:
    """Ready a healthy, connected server for the pool (see `movable`): with workers > 1 its
    socket is detached to `server.fd`. False when it cannot be pooled: the caller closes it."""
    if workers <= 1:
        return True
    if not movable(server.io.is_tls, workers):
        return False
    server.fd = server.io.detach()
    server.io = None
    return True


# -- a pooled server's read watcher kept started while it is idle -----------------------------
# With one worker (workers 1: every client and pooled server lives in the system machine's hub)
# the relay's fast path does not stop an attached server's read watcher when it detaches it:
# the watcher stays started while the server sits in the pool, and its callback is the same
# for the server's life (`Server.on_read`, the relay's reply walk bound to the server), which
# tells by `Server.reader` whom the bytes are for: the relay attached (set by its attach) or,
# while pooled, the instance (set by the fast path's detach): then `idle_readable` runs. So no
# watcher stop or start, no re-pointing and no epoll_ctl happen per transaction. Whoever else
# takes a pooled server and uses its socket (the coroutine's attach, a close) stops it first
# with `unwatch`. With workers > 1 a pooled server is a bare fd (`park`) and has no watcher.
def idle_readable(instance, server: Server) -> None:
    """Run by the hub when an idle pooled server's socket became readable: PostgreSQL closed or
    terminated it, or sent something nobody asked for (a NOTICE, an ErrorResponse, a
    notification). With pool_attach_check it is taken out of the pool and closed at once, as
    the attach check would have found it; without, it stays pooled as before (its next client
    finds out). Either way the watcher stops: the socket stays readable until read."""
    io = server.io
    if io is None:
        return
    unwatch(instance, server, io)
    route = server.route
    if not route.rule.pool_attach_check:
        return
    if not instance.router.remove_idle_if(route, lambda s, obsolete: s is server):
        return          # taken meanwhile: its new owner checks it as usual
    instance.logger.info("pool", None, server, "idle server connection is broken, closing it")
    server.broken = True
    instance.close_server_later(server)


def attach_check_failed(instance, server: Server, io) -> bool:
    """pool_attach_check for an idle server about to be handed out (plain socket `io`): True
    when it has something to say (closed, terminated, or a message nobody asked for).

    A server pooled with its watcher started (its reader the instance) is not polled: the loop
    polls its socket on every iteration, and what the last poll found is either handled
    (idle_readable took it out of the pool, so nobody gets it) or is the watcher's pending
    event, not yet run. So its pending flag says what a poll() of our own would say, but for
    the microseconds since the loop's poll, a window C Odyssey's own poll-then-write has
    too, only shorter: a server that breaks in it fails the client's query as one that breaks
    right after the check. This saves a system call and the GIL's drop and take per attach
    (docs/performance.md). Any other server (pooled by the coroutine, workers > 1) is polled.
    The relay's fast path has this inline."""
    if server.reader is instance:
        return io.sock._read_event.pending
    return io.readable_now()


def unwatch(instance, server: Server, io) -> None:
    """Stop the read watcher of an idle pooled server's socket `io` if it is still started (its
    reader the instance: see `idle_readable`); called in the thread that owns the socket before
    anyone else uses it."""
    if server.reader is instance:
        server.reader = None
        watcher = getattr(io.sock, "_read_event", None)
        if watcher is not None:
            watcher.stop()
