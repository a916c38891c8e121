"""Open many idle client connections (raw sockets: startup + auth none, then silence).

    python scripts/idle_clients.py --port 6432 --count 5000 [--user postgres --db postgres] [--hold 30]

Used by scripts/bench.py --idle-clients to measure the pooler's memory per idle client.
"""
from __future__ import annotations

import argparse
import resource
import selectors
import socket
import struct
import sys
import time


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to `want` (past the hard limit only as root); returns the new soft limit.
    Child processes started afterwards (the pooler) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def startup_packet(user: str, db: str) -> bytes:
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    return struct.pack("!I", len(body) + 4) + body


def open_idle_clients(host: str, port: int, count: int, user: str, db: str, batch: int = 200,
                      timeout: float = 30.0) -> list[socket.socket]:
    """Open `count` logged-in idle connections; returns the sockets (close them when done).
    Raises RuntimeError if a login fails or does not finish within `timeout` per batch."""
    pkt = startup_packet(user, db)
    done: list[socket.socket] = []
    try:
        while len(done) < count:
            n = min(batch, count - len(done))
            sel = selectors.DefaultSelector()
            pending = {}
            for _ in range(n):
                s = socket.create_connection((host, port), timeout=timeout)
                s.sendall(pkt)
                s.setblocking(False)
                pending[s] = b""
                sel.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} logins did not finish in {timeout}s")
                for key, _ in sel.select(timeout=1.0):
                    s = key.fileobj
                    data = s.recv(65536)
                    if not data:
                        raise RuntimeError("the pooler closed a connection during login")
                    buf = pending[s] + data
                    # walk whole messages; stop at ReadyForQuery, fail on ErrorResponse
                    pos = 0
                    ready = False
                    while len(buf) - pos >= 5:
                        tag = buf[pos:pos + 1]
                        (ln,) = struct.unpack_from("!I", buf, pos + 1)
                        if len(buf) - pos < 1 + ln:
                            break
                        if tag == b"E":
                            raise RuntimeError(f"login failed: {buf[pos + 5:pos + 1 + ln]!r}")
                        if tag == b"R" and struct.unpack_from("!I", buf, pos + 5)[0] != 0:
                            raise RuntimeError("the route wants a password; use authentication none")
                        if tag == b"Z":
                            ready = True
                        pos += 1 + ln
                    if ready:
                        sel.unregister(s)
                        del pending[s]
                        done.append(s)
                    else:
                        pending[s] = buf[pos:]
            sel.close()
    except BaseException:
        for s in done:
            s.close()
        raise
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6432)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--db", default="postgres")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds to keep them open")
    a = ap.parse_args(argv)
    raise_nofile(a.count + 100)
    t0 = time.monotonic()
    socks = open_idle_clients(a.host, a.port, a.count, a.user, a.db)
    print(f"{len(socks)} idle clients logged in after {time.monotonic() - t0:.1f}s; holding {a.hold}s")
    try:
        time.sleep(a.hold)
    finally:
        for s in socks:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
