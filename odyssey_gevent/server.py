"""A server (backend) connection and its state (mirrors Odyssey sources/server.h)."""
from __future__ import annotations

import enum
import time

from odyssey_gevent.id import new_id


class ServerState(enum.Enum):
    """Which list of its route the server is on; changed only by `Route.set_server_state`."""
    UNDEF = "undef"
    IDLE = "idle"
    ACTIVE = "active"
    EXPIRE = "expire"


class Server:
    __slots__ = ("id", "route", "io", "fd", "endpoint", "endpoint_host", "state", "client",
                 "key_pid", "key_secret", "params", "tx_status", "sync_request", "sync_reply", "copy_mode",
                 "created_at", "idle_since", "offline", "broken", "last_client_id",
                 "baseline", "login_params")

    def __init__(self, route):
        self.id = new_id("s")
        self.route = route
        self.io = None              # machinarium Io while connected
        self.fd = None              # a detached fd while parked between machines
        self.endpoint = None        # odyssey_gevent.backend.Endpoint
        self.endpoint_host = None   # for %H in the log
        self.state = ServerState.UNDEF
        self.client = None
        self.key_pid = 0
        self.key_secret = 0
        self.params: dict[str, str] = {}   # lower-case name -> value (ParameterStatus and what we SET)
        self.login_params: list[tuple[str, str]] = []   # ParameterStatus at login, names as sent
        self.tx_status = b"I"
        self.sync_request = 0       # queries and Syncs sent
        self.sync_reply = 0         # ReadyForQuery received
        self.copy_mode = False
        self.created_at = time.monotonic()
        self.idle_since = self.created_at
        self.offline = False
        self.broken = False         # an IO error happened: never reuse
        self.last_client_id = None
        self.baseline: dict[str, str] = {}   # parameters right after login (what DISCARD ALL restores)

    @property
    def connected(self) -> bool:
        return self.io is not None or self.fd is not None

    @property
    def synchronized(self) -> bool:
        return self.sync_request == self.sync_reply

    @property
    def in_transaction(self) -> bool:
        return self.tx_status != b"I"

    def __repr__(self) -> str:
        return f"<Server {self.id} {self.state.value}>"
