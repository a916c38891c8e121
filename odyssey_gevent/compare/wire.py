"""A blocking PostgreSQL v3 client on kiwi, for the comparator's raw steps.

It speaks through plain sockets (no gevent) and keeps every message it receives, so a step can
record what a driver would hide: the SQLSTATE of a login error, each NoticeResponse, the
ParameterStatus values, and whether the pooler closed the connection afterwards.
"""
from __future__ import annotations

import os
import socket
import ssl
import struct
import time

from kiwi import fe_read, fe_write
from kiwi.errors import KiwiError
from kiwi.framer import read_message
from kiwi.md5 import md5_salted
from kiwi.scram import ScramClient

#: a read that waits longer than this is reported as a timeout, not a hang
READ_TIMEOUT = 10.0


class Closed(Exception):
    """The peer closed the connection (EOF or a reset)."""


def error_record(payload) -> dict:
    """An ErrorResponse/NoticeResponse as {severity, sqlstate, message} (detail/hint if sent)."""
    e = fe_read.read_error(bytes(payload))
    out = {"severity": e.fields.get("S", e.severity), "sqlstate": e.sqlstate, "message": e.message}
    if e.detail:
        out["detail"] = e.detail
    if e.hint:
        out["hint"] = e.hint
    return out


class RawConnection:
    """One client connection: ``open()`` the socket, ``login()``, then ``query()``/``send()``
    and ``read_until_ready()``. Every method raises ``Closed`` when the peer went away."""

    def __init__(self, host: str, port: int, timeout: float = READ_TIMEOUT):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.params: dict[str, str] = {}
        self.key: tuple[int, int] | None = None
        self.closed = False

    # -- transport ---------------------------------------------------------------------------
    def open(self) -> "RawConnection":
        if self.host.startswith("/"):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(self.timeout)
            s.connect(os.path.join(self.host, f".s.PGSQL.{self.port}"))
        else:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock = s
        return self

    def start_tls(self) -> bool:
        """SSLRequest; wraps the socket when the pooler answers 'S'. False on 'N'."""
        self.sock.sendall(fe_write.ssl_request())
        answer = self._recv_exact(1)
        if answer == b"N":
            return False
        if answer != b"S":
            raise Closed(f"unexpected answer {answer!r} to SSLRequest")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=None)
        return True

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.closed = True
            raise Closed(str(e)) from None

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"no answer within {self.timeout}s") from None
        except OSError as e:
            self.closed = True
            raise Closed(str(e)) from None
        if not chunk:
            self.closed = True
            raise Closed("EOF")
        self.buf += chunk

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read(self) -> tuple[str, bytes]:
        """One whole message: (type letter, payload)."""
        while True:
            try:
                got = read_message(self.buf, 0)
            except KiwiError as e:
                self.closed = True
                raise Closed(f"unframeable bytes from the pooler: {e}") from None
            if got is not None:
                type_byte, view, end = got
                payload = bytes(view)
                view.release()
                del self.buf[:end]
                return chr(type_byte), payload
            self._fill()

    def close(self, abrupt: bool = False) -> None:
        if self.sock is None:
            return
        try:
            if abrupt:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.sock.sendall(fe_write.terminate())
        except OSError:
            pass
        self.sock.close()
        self.sock = None
        self.closed = True

    # -- protocol ----------------------------------------------------------------------------
    def login(self, user: str, database: str, password: str | None = None,
              params: dict | None = None) -> dict:
        """Startup and authentication. Returns {ok, error?, notices, auth} where auth names
        the methods the pooler asked for (clear_text, md5, SCRAM-SHA-256)."""
        startup = {"user": user, "database": database, **(params or {})}
        self.send(fe_write.startup_message(startup))
        result: dict = {"auth": []}
        notices: list = []
        scram = None
        while True:
            kind, payload = self.read()
            if kind == "R":
                auth = fe_read.read_authentication(payload)
                if auth.code == 0:
                    continue
                if auth.code == 3:
                    result["auth"].append("clear_text")
                    self.send(fe_write.password_message(password or ""))
                elif auth.code == 5:
                    result["auth"].append("md5")
                    self.send(fe_write.password_message(md5_salted(user, password or "", auth.salt)))
                elif auth.code == 10:
                    result["auth"].append("+".join(auth.mechanisms))
                    scram = ScramClient(password or "")
                    self.send(fe_write.sasl_initial_response("SCRAM-SHA-256", scram.first()))
                elif auth.code == 11:
                    self.send(fe_write.sasl_response(scram.final(auth.data)))
                elif auth.code == 12:
                    pass
                else:
                    result["auth"].append(f"code {auth.code}")
                    return {**result, "ok": False}
            elif kind == "S":
                name, value = fe_read.read_parameter_status(payload)
                self.params[name] = value
            elif kind == "K":
                self.key = fe_read.read_backend_key_data(payload)
            elif kind == "N":
                notices.append(error_record(payload))
            elif kind == "E":
                result.update(ok=False, error=error_record(payload))
                break
            elif kind == "Z":
                result["ok"] = True
                break
        if notices:
            result["notices"] = notices
        if not result["auth"]:
            del result["auth"]
        return result

    def pending(self, wait: float = 0.05) -> tuple[list[tuple[str, bytes]], bool]:
        """Messages the pooler sent on its own while the client was idle (a FATAL at shutdown
        or idle timeout, a NOTICE), and whether it then closed the connection."""
        out: list = []
        if self.sock is None:
            return out, True
        self.sock.settimeout(wait)
        try:
            while True:
                out.append(self.read())
        except TimeoutError:
            return out, False
        except Closed:
            return out, True
        finally:
            if self.sock is not None:
                self.sock.settimeout(self.timeout)

    def read_until_ready(self, stop_on_error: bool = False) -> list[tuple[str, bytes]]:
        """Messages up to and including ReadyForQuery (or an ErrorResponse with stop_on_error)."""
        out = []
        while True:
            kind, payload = self.read()
            out.append((kind, payload))
            if kind == "Z" or (stop_on_error and kind == "E"):
                return out

    def cancel(self) -> None:
        """A CancelRequest with this connection's key, on a new connection."""
        if self.key is None:
            raise Closed("no BackendKeyData to cancel with")
        other = RawConnection(self.host, self.port, self.timeout).open()
        try:
            other.send(fe_write.cancel_request(*self.key))
            try:
                other._fill()          # wait for the pooler to close it: the cancel was taken
            except (Closed, TimeoutError):
                pass
        finally:
            other.sock.close()

    def alive(self) -> bool:
        """Does `select 1` still get a ReadyForQuery on this connection (an error inside an
        aborted transaction counts as alive)?"""
        if self.closed or self.sock is None:
            return False
        try:
            self.send(fe_write.query("select 1"))
            self.read_until_ready()
        except (Closed, TimeoutError):
            return False
        return True


def summarize(messages: list[tuple[str, bytes]]) -> dict:
    """Rows, command tags, errors and notices of a list of backend messages."""
    out: dict = {}
    rows: list = []
    tags: list = []
    columns: list = []
    notices: list = []
    copy_out: list = []
    for kind, payload in messages:
        if kind == "T":
            columns = [c.name for c in fe_read.read_row_description(payload)]
            out["columns"] = columns
        elif kind == "D":
            rows.append([None if v is None else bytes(v).decode("utf-8", "replace")
                         for v in fe_read.read_data_row(payload)])
        elif kind == "C":
            tags.append(fe_read.read_command_complete(payload))
        elif kind == "E":
            out["error"] = error_record(payload)
        elif kind == "N":
            notices.append(error_record(payload))
        elif kind == "d":
            copy_out.append(payload.decode("utf-8", "replace"))
        elif kind == "I":
            tags.append("(empty query)")
    if rows:
        out["rows"] = rows
    if tags:
        out["tags"] = tags
    if notices:
        out["notices"] = notices
    if copy_out:
        out["copy_out"] = "".join(copy_out)
    return out


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
