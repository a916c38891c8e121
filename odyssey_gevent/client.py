"""A client connection and its state (mirrors Odyssey sources/client.c and client.h).

Which fields the router's lock guards is written in route.py.
"""
from __future__ import annotations

import enum
import os
import struct
import time

from odyssey_gevent.supervisor import KEY_TAG


class ClientState(enum.Enum):
    """Where the client is, as SHOW CLIENTS reports it."""
    UNDEF = "undef"
    PENDING = "pending"     # routed, holds no server
    QUEUE = "queue"         # waiting for a server
    ACTIVE = "active"       # a server is attached


# A client's id and cancel key are 14 bytes of the kernel's random generator (os.urandom),
# drawn for _RANDOM_BATCH clients at a time: one getrandom system call per 64 logins instead of
# one each. Every client takes bytes of its own that no one else gets, so its key is as
# unpredictable as before (a client sees only its own; other slices of the same draw are
# independent output of the generator). The draw is worked out for the whole batch at once
# (one hex() and one struct unpack of all the keys instead of a slice, a hex() and an unpack
# per login): _RANDOM holds (id, key_pid, key_secret) per client to come. list.pop is one C
# call, atomic under the GIL: the workers' threads share the list (two refills at once only
# draw more). A forked child empties it, or it would hand out its parent's next keys.
_RANDOM: list = []
_RANDOM_BATCH = 64
# per client: the id's 6 bytes, then the BackendKeyData pid and secret (unsigned, as kiwi
# reads CancelRequest)
_KEYS = struct.Struct("!" + "6xII" * _RANDOM_BATCH)


def _draw() -> tuple:
    """Refill _RANDOM; return the first client's (id, key_pid, key_secret) of the new draw."""
    block = os.urandom(14 * _RANDOM_BATCH)
    text = block.hex()
    keys = _KEYS.unpack(block)
    batch = []
    for i in range(_RANDOM_BATCH):
        secret = keys[2 * i + 1]
        if KEY_TAG is not None:             # processes N: the top byte names this process
            secret = (secret & 0xFFFFFF) | KEY_TAG
        # the id as id.new_id("c"): "c" and the 6 bytes in hex
        batch.append(("c" + text[28 * i:28 * i + 12], keys[2 * i] & 0x7FFFFFFF, secret))
    first = batch.pop()
    _RANDOM.extend(batch)
    return first


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RANDOM.clear)
_UNDEF = ClientState.UNDEF    # a module constant: an Enum member load costs about 800 instructions


class Client:
    __slots__ = ("id", "io", "listen", "conn_type", "tls", "peer_host", "peer_port", "_local", "startup", "user", "database", "vars", "rule", "route", "server",
                 "state", "key_pid", "key_secret", "time_accept", "password", "is_console", "relay",
                 "deploy_list", "prepared", "auth_secret", "scram_keys", "killed", "tsa_checks", "waiter",
                 "vars_key")

    def __init__(self, io, listen=None, conn_type: str = "host", peer=None, local=None):
        # the id and the BackendKeyData we hand out (random, matched by the router on
        # CancelRequest): see _RANDOM
        try:
            self.id, self.key_pid, self.key_secret = _RANDOM.pop()
        except IndexError:
            self.id, self.key_pid, self.key_secret = _draw()
        self.io = io
        self.listen = listen
        self.conn_type = conn_type          # "host" (TCP) or "local" (unix socket)
        self.tls = False
        self.peer_host, self.peer_port = peer if peer else (None, None)
        # the pooler's end of the connection (SHOW CLIENTS' local_addr, local_port): asked of the
        # socket when first read (getsockname, as C asks at SHOW time) unless given; a login
        # spent about 2,900 instructions on it, for a column few ever look at
        self._local = local
        self.startup = None                 # kiwi StartupMessage
        self.user = None
        self.database = None
        self.vars: dict[str, str] = {}      # lower-case name -> value to keep on every server (maintain_params)
        self.rule = None
        self.route = None
        self.server = None
        self.state = _UNDEF
        self.time_accept = time.monotonic()
        self.password = None
        self.auth_secret = None              # the stored secret auth_query gave (auth_query.py)
        self.scram_keys = None               # (ClientKey, ServerKey) proved by SCRAM against it
        self.is_console = False
        self.relay = None
        self.deploy_list = None             # deploy.py's cache of the tracked vars; None = stale
        self.prepared = None                # statement name -> prepared.Statement (pooled statements)
        self.killed = False                 # KILL_CLIENT: end the session at the next chance (router.kill)
        self.tsa_checks = None              # (catchup_timeout, target_session_attrs): tsa.work_out
        self.waiter = None                  # route.Waiter: its place in the queue for a server (router.attach)
        # while `vars` are still exactly what the startup packet gave: that packet's kept bytes
        # (frontend._STARTUPS), a key with a cached hash the vars' later memos (the ParameterStatus
        # block, deploy's list) are found by instead of a tuple of their items; None once anything
        # changes them (a rule's options, application_name_add_host, a ParameterStatus) or when
        # the packet was not kept
        self.vars_key = None

    def _local_address(self) -> tuple:
        local = self._local
        if local is None:
            local = (None, None)
            io = self.io
            if self.conn_type == "host" and io is not None:
                # SHOW CLIENTS asks under the router's lock: a routed client's socket is open (the
                # frontend closes it after unroute)
                try:
                    loc = io.local
                    local = (loc[0], loc[1])
                except OSError:
                    pass
            self._local = local
        return local

    @property
    def local_host(self) -> str | None:
        return self._local_address()[0]

    @property
    def local_port(self) -> int | None:
        return self._local_address()[1]

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.user}@{self.database}>"
