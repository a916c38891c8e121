"""worker._spawn: an accepted client's coroutine starts with the startup packet's first bytes
when they are there at accept, else only once the socket is readable or its login times out.

The coroutine body (frontend) is replaced by a recorder: what is checked here is when and with
what it is started, on real sockets."""
from __future__ import annotations

import time
from types import SimpleNamespace

import machinarium as mm
from odyssey_gevent import worker

STARTUP = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"     # an SSLRequest: 8 bytes


def _pair():
    [srv] = mm.listen("127.0.0.1", 0)
    c = mm.connect("127.0.0.1", srv.local[1], 2000)
    return srv, c, srv.accept(2000)


def _recorder(calls):
    def fake_frontend(instance, io, listen, conn_type, peer, local, deadline, head=None, accepted=None):
        calls.append({"head": head, "deadline": deadline, "at": time.monotonic(),
                      "readable": io.readable_now(), "accepted": accepted})
        io.close()
    return fake_frontend


def _spawned_after(in_machine, monkeypatch, data: bytes) -> list:
    """The frontend() calls _spawn makes for a client that sent `data` before its accept."""
    calls = []
    monkeypatch.setattr(worker, "frontend", _recorder(calls))

    def body():
        srv, c, io = _pair()
        c.write(data)
        mm.sleep(20)                                # the bytes reach the accepted socket
        worker._spawn(None, io, SimpleNamespace(client_login_timeout=5000), "host", ("127.0.0.1", 1), None)
        mm.sleep(20)
        c.close()
        srv.close()

    in_machine(body)
    return calls


def test_packet_there_at_accept_is_handed_to_the_coroutine(in_machine, monkeypatch):
    calls = _spawned_after(in_machine, monkeypatch, STARTUP)
    assert len(calls) == 1
    assert calls[0]["head"] == STARTUP and calls[0]["deadline"] > time.monotonic()   # all 8 bytes
    # the accept time is the one the login deadline was worked out from (one clock read)
    assert calls[0]["deadline"] == calls[0]["accepted"] + 5.0 and calls[0]["accepted"] <= calls[0]["at"]


def test_accept_reads_at_most_the_8_bytes_no_first_packet_is_shorter(in_machine, monkeypatch):
    """A longer packet, and bytes sent on after it: the accept takes its first 8 bytes only."""
    sm = b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00"
    query = b"Q\x00\x00\x00\x0dselect 1\x00"
    calls = _spawned_after(in_machine, monkeypatch, sm + query)
    assert len(sm) == 16 and len(calls) == 1 and calls[0]["head"] == sm[:8]


def test_silent_client_has_no_coroutine_until_it_speaks(in_machine, monkeypatch):
    calls = []
    monkeypatch.setattr(worker, "frontend", _recorder(calls))

    def body():
        srv, c, io = _pair()
        m = mm.current_machine()
        before = len(m._coroutines)
        worker._spawn(None, io, SimpleNamespace(client_login_timeout=5000), "host", ("127.0.0.1", 1), None)
        mm.sleep(50)
        silent = (list(calls), len(m._coroutines) - before)
        c.write(STARTUP)
        for _ in range(100):
            if calls:
                break
            mm.sleep(10)
        c.close()
        srv.close()
        return silent

    silent = in_machine(body)
    assert silent == ([], 0)
    assert len(calls) == 1
    # started by the read watcher: nothing read yet, the packet is waiting in the socket
    assert calls[0]["head"] is None and calls[0]["readable"]
    # the client keeps its accept time (log_session's login time), not its coroutine's start
    assert calls[0]["accepted"] is not None and calls[0]["accepted"] < calls[0]["at"]


def test_silent_client_starts_at_its_login_timeout(in_machine, monkeypatch):
    calls = []
    monkeypatch.setattr(worker, "frontend", _recorder(calls))

    def body():
        srv, c, io = _pair()
        t = time.monotonic()
        worker._spawn(None, io, SimpleNamespace(client_login_timeout=100), "host", ("127.0.0.1", 1), None)
        for _ in range(300):
            if calls:
                break
            mm.sleep(10)
        c.close()
        srv.close()
        return t

    t = in_machine(body)
    assert len(calls) == 1
    call = calls[0]
    # the timer started it (nothing to read; frontend's read then times out), with the
    # deadline client_login_timeout put on the login from the accept
    assert call["head"] is None and not call["readable"]
    assert call["deadline"] > t


def test_clients_after_each_other_run_in_one_greenlet(in_machine, monkeypatch):
    """An ended client's greenlet runs the next client of the machine (machinarium's parked
    greenlets), whichever way its coroutine starts: at accept or by the read watcher."""
    import gevent
    calls = []
    rec = _recorder(calls)

    def fake_frontend(*args, **kwargs):
        rec(*args, **kwargs)
        calls[-1]["glet"] = gevent.getcurrent()
    monkeypatch.setattr(worker, "frontend", fake_frontend)

    def body():
        for i, speak_first in enumerate((True, False, True)):
            srv, c, io = _pair()
            if speak_first:
                c.write(STARTUP)
                mm.sleep(20)                    # the bytes reach the accepted socket
            worker._spawn(None, io, SimpleNamespace(client_login_timeout=5000), "host", ("127.0.0.1", 1), None)
            if not speak_first:
                c.write(STARTUP)
            for _ in range(100):
                if len(calls) > i:
                    break
                mm.sleep(10)
            mm.sleep(10)                        # the coroutine has ended
            c.close()
            srv.close()

    in_machine(body)
    assert len(calls) == 3
    assert [x["head"] is not None for x in calls] == [True, False, True]
    assert calls[0]["glet"] is calls[1]["glet"] is calls[2]["glet"]
