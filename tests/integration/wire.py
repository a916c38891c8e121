"""A tiny raw PostgreSQL v3 frontend for integration tests: bytes built with struct, no kiwi.

It exists so tests can send what a driver never would (garbage, truncated packets, protocol 2,
unknown message types) and read the exact ErrorResponse fields a pooler answers with.
"""
from __future__ import annotations

import hashlib
import socket
import struct
import time

PROTOCOL_3 = 196608          # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# An Odyssey-generated error text starts with this (client_show_id yes, the default).
ODYSSEY_PREFIX_RE = r"^odyssey: c[0-9a-f]{12}: "


def startup(user: str, database: str, protocol: int = PROTOCOL_3, **params: str) -> bytes:
    body = struct.pack("!I", protocol)
    for k, v in {"user": user, "database": database, **params}.items():
        body += k.encode() + b"\0" + str(v).encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def request_code(code: int) -> bytes:
    """SSLRequest / GSSENCRequest: length 8 + the magic code."""
    return struct.pack("!II", 8, code)


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST, pid, secret)


def message(tag: bytes, payload: bytes = b"") -> bytes:
    return tag + struct.pack("!I", len(payload) + 4) + payload


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def password(pw: str) -> bytes:
    return message(b"p", pw.encode() + b"\0")


def terminate() -> bytes:
    return message(b"X")


def md5_password(user: str, pw: str, salt: bytes) -> str:
    inner = hashlib.md5((pw + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def decode_row(body: bytes) -> list[str | None]:
    """A DataRow body as text values (None for NULL)."""
    (n,) = struct.unpack("!H", body[:2])
    pos, row = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(body[pos:pos + ln].decode())
            pos += ln
    return row


def parse_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse body → {'S': 'FATAL', 'C': '28P01', 'M': '...', ...}."""
    out = {}
    for part in payload.split(b"\0"):
        if part:
            out[part[:1].decode()] = part[1:].decode("utf-8", "replace")
    return out


class Wire:
    """One raw client socket with message-level reads."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.params: dict[str, str] = {}
        self.key: tuple[int, int] | None = None

    # -- raw IO -------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        self._fill(n)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_message(self) -> tuple[bytes, bytes]:
        """(type byte, payload); EOFError when the peer closed, socket.timeout when it is silent."""
        self._fill(5)
        tag = self.buf[:1]
        (length,) = struct.unpack("!I", self.buf[1:5])
        self._fill(1 + length)
        payload = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return tag, payload

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def close(self, abort: bool = False) -> None:
        """abort=True sends a RST (SO_LINGER 0): the client vanishes without a Terminate."""
        if abort:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    # -- protocol steps ---------------------------------------------------------------------------
    def login(self, user: str, database: str, pw: str | None = None, **params) -> dict | None:
        """Startup + cleartext/md5 auth up to ReadyForQuery. Returns None on success, or the fields
        of the ErrorResponse the server sent instead."""
        self.send(startup(user, database, **params))
        while True:
            tag, body = self.read_message()
            if tag == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 0:
                    continue
                if code == 3:
                    self.send(password(pw or ""))
                elif code == 5:
                    self.send(password(md5_password(user, pw or "", body[4:8])))
                else:
                    raise AssertionError(f"auth method {code} is not supported by the test client")
            elif tag == b"S":
                k, v, _ = body.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif tag == b"K":
                self.key = struct.unpack("!II", body[:8])
            elif tag == b"E":
                return parse_fields(body)
            elif tag == b"N":
                continue
            elif tag == b"Z":
                return None
            else:
                raise AssertionError(f"unexpected message {tag!r} during login")

    def simple_query(self, sql: str) -> tuple[list[list[str | None]], dict | None, str]:
        """Run one Query: (rows as text, ErrorResponse fields or None, ReadyForQuery status)."""
        self.send(query(sql))
        rows, error = [], None
        while True:
            tag, body = self.read_message()
            if tag == b"D":
                rows.append(decode_row(body))
            elif tag == b"E":
                error = parse_fields(body)
            elif tag == b"Z":
                return rows, error, body.decode()

    def read_until_closed(self, timeout: float) -> list[tuple[bytes, bytes]]:
        """Read everything until the server closes; raise AssertionError if it is still open after
        `timeout` seconds. Returns the messages received before the close."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {got!r}")
            self.sock.settimeout(left)
            try:
                got.append(self.read_message())
            except EOFError:
                return got
            except socket.timeout:
                continue

    def is_open(self, wait: float = 0.2) -> bool:
        """True if the server neither closed the socket nor sent anything within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False
        return False  # closed (b"") or it spoke unasked


def errors_in(messages: list[tuple[bytes, bytes]]) -> list[dict]:
    return [parse_fields(body) for tag, body in messages if tag == b"E"]


def login_error(port: int, user: str, database: str, pw: str | None = None, **params) -> dict:
    """Log in on a fresh connection that must be refused; returns the ErrorResponse fields."""
    w = Wire(port)
    try:
        err = w.login(user, database, pw, **params)
    finally:
        w.close()
    assert err is not None, f"{user}@{database} was let in"
    return err

