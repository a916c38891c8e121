"""cancel.py without PostgreSQL: send() writes one CancelRequest that a fake postmaster reads
and ends the connection with a FIN; forward() maps a client's key to its server's key through
the real router and does nothing for a key nobody owns (Odyssey cancel.c)."""
from __future__ import annotations

import os
import socket
import struct
import tempfile

import pytest

import machinarium as mm
from kiwi import be_read
from kiwi.be_read import CancelRequest
from odyssey_gevent import cancel, supervisor
from odyssey_gevent.client import Client
from odyssey_gevent.config import reader
from odyssey_gevent.config.model import Endpoint
from odyssey_gevent.instance import Instance
from odyssey_gevent.logger import Logger

pytestmark = pytest.mark.timeout(10)

CONFIG = """
log_format "%l (%c) %m\\n"
cancel_timeout_ms {cancel_timeout_ms}
listen {{
    host "127.0.0.1"
    port 6432
}}
storage "pg" {{
    type "remote"
    host "127.0.0.1"
    port 5432
}}
database default {{
    user default {{
        authentication "none"
        storage "pg"
        pool "transaction"
    }}
}}
"""


def _instance(log_file=None, cancel_timeout_ms=300):
    config = reader.loads(CONFIG.format(cancel_timeout_ms=cancel_timeout_ms), "cancel.conf")
    return Instance(config, Logger("%l (%c) %m\n", to_stdout=False, log_file=log_file), "cancel.conf")


class Postmaster:
    """Accepts connections and reads each one's CancelRequest. `close_after_read`: close at
    once like PostgreSQL; else keep the connection open and report how it ended."""

    def __init__(self, close_after_read=True, unix_dir=None):
        if unix_dir is None:
            [self.listener] = mm.listen("127.0.0.1", 0)
            self.endpoint = Endpoint("127.0.0.1", self.listener.local[1])
        else:
            self.listener = mm.listen_unix(os.path.join(unix_dir, ".s.PGSQL.5999"))
            self.endpoint = Endpoint(unix_dir, 5999, address_type="unix")
        self.close_after_read = close_after_read
        self.requests = []
        self.raw = []
        self.endings = []
        self.co = mm.Coroutine(self._run, name="postmaster")

    def _run(self):
        while True:
            try:
                io = self.listener.accept()
            except OSError:
                return
            try:
                head = io.read(16, 2000)
                self.raw.append(head)
                msg, used = be_read.read_startup(bytearray(head))
                self.requests.append(msg)
                if not self.close_after_read:
                    try:
                        n = io.read_into(bytearray(16), 3000)
                        self.endings.append("eof" if n == 0 else "data")
                    except ConnectionResetError:
                        self.endings.append("reset")
            finally:
                io.close()

    def close(self):
        self.listener.close()


class Silent:
    """A listener nobody accepts on: forward() is synchronous, so once it returns, a cancel it
    sent would be waiting in the backlog (the kernel completes the handshake)."""

    def __init__(self):
        [self.listener] = mm.listen("127.0.0.1", 0)
        self.endpoint = Endpoint("127.0.0.1", self.listener.local[1])

    def accepted_nothing(self) -> bool:
        try:
            self.listener.accept(0).close()
        except mm.TimedOut:
            return True
        return False

    def close(self):
        self.listener.close()


# ----------------------------------------------------------------------------------------------
# send

def test_send_writes_one_cancel_request(in_machine):
    def body():
        pm = Postmaster()
        try:
            ok = cancel.send(_instance(), pm.endpoint, 4242, 0xCAFEBABE)
            while not pm.requests:
                mm.sleep(1)
            return ok, pm.raw, pm.requests
        finally:
            pm.close()

    ok, raw, requests = in_machine(body)
    assert ok is True
    assert raw == [struct.pack("!IIII", 16, 80877102, 4242, 0xCAFEBABE)]
    assert requests == [CancelRequest(4242, 0xCAFEBABE)]


def test_send_over_a_unix_socket(in_machine):
    def body():
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            pm = Postmaster(unix_dir=d)
            try:
                ok = cancel.send(_instance(), pm.endpoint, 1, 2)
                while not pm.requests:
                    mm.sleep(1)
                return ok, pm.requests
            finally:
                pm.close()

    assert in_machine(body) == (True, [CancelRequest(1, 2)])


def test_send_ends_with_a_fin_when_the_server_keeps_the_connection(in_machine):
    """PostgreSQL closes first; if it does not within cancel_timeout_ms we close, with a FIN
    (never a reset) and still report the request as sent."""
    def body():
        pm = Postmaster(close_after_read=False)
        try:
            ok = cancel.send(_instance(cancel_timeout_ms=50), pm.endpoint, 7, 8)
            while not pm.endings:
                mm.sleep(1)
            return ok, pm.requests, pm.endings
        finally:
            pm.close()

    assert in_machine(body) == (True, [CancelRequest(7, 8)], ["eof"])


def test_send_to_nobody_fails_and_logs(in_machine, tmp_path):
    log = tmp_path / "log"

    def body():
        [lst] = mm.listen("127.0.0.1", 0)
        port = lst.local[1]
        lst.close()
        return port, cancel.send(_instance(str(log)), Endpoint("127.0.0.1", port), 1, 2)

    port, ok = in_machine(body)
    assert ok is False
    assert f"error (cancel) failed to connect to 127.0.0.1:{port} for cancel" in log.read_text()


# ----------------------------------------------------------------------------------------------
# forward through the router

def _routed(inst):
    c = Client(None, conn_type="host", peer=("127.0.0.1", 5555))
    c.database, c.user = "db", "app"
    inst.router.route(c)
    return c


def test_forward_sends_the_servers_key_not_the_clients(in_machine):
    def body():
        pm = Postmaster()
        try:
            inst = _instance()
            client = _routed(inst)
            server = inst.router.attach(client, 0)
            server.endpoint = pm.endpoint
            server.key_pid, server.key_secret = 31337, 424242
            cancel.forward(inst, client.key_pid, client.key_secret)
            while not pm.requests:
                mm.sleep(1)
            # a server counted as being cancelled (if the router counts) is released again
            in_flight = getattr(server, "cancels", 0)
            return pm.requests, client.route.stats.count_cancel, (client.key_pid, client.key_secret), in_flight
        finally:
            pm.close()

    requests, count, client_key, in_flight = in_machine(body)
    assert requests == [CancelRequest(31337, 424242)]
    assert client_key != (31337, 424242)
    assert count == 1 and in_flight == 0


def test_silent_listener_sees_a_real_cancel(in_machine):
    """The check the negative tests below rely on."""
    def body():
        pm = Silent()
        try:
            cancel.send(_instance(cancel_timeout_ms=1), pm.endpoint, 1, 2)
            return pm.accepted_nothing()
        finally:
            pm.close()

    assert in_machine(body) is False


def test_forward_with_no_matching_key_does_nothing(in_machine):
    def body():
        pm = Silent()
        try:
            inst = _instance()
            client = _routed(inst)
            server = inst.router.attach(client, 0)
            server.endpoint = pm.endpoint
            cancel.forward(inst, client.key_pid, client.key_secret ^ 1)
            cancel.forward(inst, client.key_pid ^ 1, client.key_secret)
            return pm.accepted_nothing(), client.route.stats.count_cancel
        finally:
            pm.close()

    assert in_machine(body) == (True, 0)


def test_forward_for_a_client_without_a_server_does_nothing(in_machine):
    def body():
        pm = Silent()
        try:
            inst = _instance()
            client = _routed(inst)
            cancel.forward(inst, client.key_pid, client.key_secret)     # no server attached
            server = inst.router.attach(client, 0)                      # attached, not connected yet
            cancel.forward(inst, client.key_pid, client.key_secret)
            return pm.accepted_nothing(), server.endpoint, client.route.stats.count_cancel
        finally:
            pm.close()

    assert in_machine(body) == (True, None, 0)


def test_forward_after_unroute_does_nothing(in_machine):
    def body():
        pm = Silent()
        try:
            inst = _instance()
            client = _routed(inst)
            server = inst.router.attach(client, 0)
            server.endpoint = pm.endpoint
            inst.router.close(client)
            inst.router.unroute(client)
            cancel.forward(inst, client.key_pid, client.key_secret)
            return pm.accepted_nothing()
        finally:
            pm.close()

    assert in_machine(body) is True


# ----------------------------------------------------------------------------------------------
# the other side of an online restart (supervisor.pass_to_partner)

def _peer_socket(group: int, index: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(supervisor.peer_address(index, group))
    s.listen(4)
    s.settimeout(0)
    return s


def _received(s: socket.socket) -> list[tuple[int, int, int, int]]:
    out = []
    while True:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return out
        conn.settimeout(2)
        out.append(struct.unpack("!IIII", conn.recv(16)))
        conn.close()


def test_an_unknown_key_goes_to_the_other_side_of_an_online_restart(in_machine):
    """A key no client of this single process has goes, during an online restart, to the other
    side's peer socket: the process of the key's index in a group, else index 0 (a single
    process, whose keys carry no index). Marked as the partner's, so it is not passed on again;
    with no restart under way nothing is sent."""
    group = 1_000_000_000 + os.getpid()          # a supervisor pid no process has
    first, fourth = _peer_socket(group, 0), _peer_socket(group, 3)
    try:
        def body():
            inst = _instance()
            inst.partner = group
            cancel.forward(inst, 77, (3 << 24) | 5)
            cancel.forward(inst, 78, (9 << 24) | 6)      # no process 9 there: index 0
            inst.partner = None
            cancel.forward(inst, 79, 7)

        in_machine(body)
        assert _received(fourth) == [(16, supervisor.PARTNER_CODE, 77, (3 << 24) | 5)]
        assert _received(first) == [(16, supervisor.PARTNER_CODE, 78, (9 << 24) | 6)]
    finally:
        first.close()
        fourth.close()
