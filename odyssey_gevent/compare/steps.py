"""Scenario steps: each takes its YAML arguments, acts on one target (a pooler, or PostgreSQL
itself) and returns the record that is compared between targets.

A record is a small dict of plain values: rows, command tags, errors as {severity, sqlstate,
message}, notices, ParameterStatus values, and at the end of a scenario which connections are
still usable. Connections are named (``as:`` / ``on:``); the default name is ``c``.
"""
from __future__ import annotations

import re
import signal as signal_mod
import struct
import threading
import time

import psycopg2
import psycopg2.extensions

from kiwi import fe_write
from odyssey_gevent.compare.wire import Closed, RawConnection, error_record, summarize

#: steps that only make sense against a pooler; PostgreSQL-direct runs skip them
POOLER_ONLY = {"console", "signal", "reload", "wait_log"}
#: steps whose results are checked against PostgreSQL directly in expectation mode
QUERY_STEPS = {"query", "extended", "copy_in", "copy_out"}


def _bytes(text: str) -> bytes:
    return bytes.fromhex(text[4:]) if text.startswith("hex:") else text.encode("latin-1")


class StepError(Exception):
    """A scenario that cannot run as written (bad YAML, unknown connection name)."""


class Target:
    """Where steps go: host/port of a listener, a unix socket dir, and (for poolers) the
    process to signal. ``kind`` is "pooler" or "postgres"."""

    def __init__(self, name: str, host: str, port: int, unix_dir: str | None = None,
                 process=None, kind: str = "pooler", reload=None):
        self.name, self.host, self.port = name, host, port
        self.unix_dir, self.process, self.kind = unix_dir, process, kind
        self._reload = reload

    def signal(self, sig: int) -> None:
        self.process.signal(sig)

    def reload(self, rules: str | None, globals_: str | None) -> None:
        self._reload(rules, globals_)

    def running(self) -> bool:
        return self.process is None or self.process.proc.poll() is None


def _libpq_error(exc: Exception) -> dict:
    """psycopg2's error as a record. Errors at connect carry no SQLSTATE in libpq's API: the
    severity and message are taken from its text."""
    pgcode = getattr(exc, "pgcode", None)
    if pgcode:
        diag = exc.diag
        return {"severity": diag.severity, "sqlstate": pgcode, "message": diag.message_primary}
    text = str(exc).strip()
    m = re.search(r"\b(FATAL|ERROR|PANIC):\s+(.*)", text)
    if m:
        return {"severity": m.group(1), "message": m.group(2).splitlines()[0].strip()}
    return {"lost": True}


class LibpqConnection:
    """A psycopg2 connection (autocommit) with the same record shape as the raw one."""

    def __init__(self, con):
        self.con = con

    @property
    def closed(self) -> bool:
        return bool(self.con.closed)

    def run(self, sql: str, cancel_after: float | None = None) -> dict:
        out: dict = {}
        timer = None
        if cancel_after is not None:
            timer = threading.Timer(cancel_after, self.con.cancel)
            timer.start()
        cur = self.con.cursor()
        try:
            cur.execute(sql)
            if cur.description:
                out["columns"] = [d.name for d in cur.description]
                rows = cur.fetchall()
                if rows:
                    out["rows"] = [[None if v is None else str(v) for v in r] for r in rows]
            if cur.statusmessage:
                out["tags"] = [cur.statusmessage]
        except psycopg2.Error as e:
            out["error"] = _libpq_error(e)
        finally:
            if timer is not None:
                timer.join()
        if self.con.notices:
            out["notices"] = [{"message": n.split(":", 1)[-1].strip(), "severity": n.split(":", 1)[0]}
                              for n in self.con.notices]
            del self.con.notices[:]
        return out

    def alive(self) -> bool:
        if self.con.closed:
            return False
        try:
            cur = self.con.cursor()
            cur.execute("select 1")
            return True
        except psycopg2.Error:
            return False

    def close(self, abrupt: bool = False) -> None:
        self.con.close()


class Session:
    """Runs one scenario's steps against one target and collects the records."""

    def __init__(self, target: Target, passwords: dict | None = None):
        self.target = target
        self.conns: dict[str, object] = {}
        self.records: list[dict] = []
        self.passwords = passwords or {}

    # -- helpers --------------------------------------------------------------------------------
    def _conn(self, args: dict):
        name = args.get("on", "c")
        if name not in self.conns:
            raise StepError(f"no connection named {name!r}")
        return self.conns[name]

    def _endpoint(self, args: dict) -> tuple[str, int]:
        if args.get("unix"):
            if not self.target.unix_dir:
                raise StepError("the target has no unix socket")
            return self.target.unix_dir, self.target.port
        return self.target.host, self.target.port

    # -- steps ----------------------------------------------------------------------------------
    def step_connect(self, args: dict) -> dict:
        name = args.get("as", "c")
        user, db = args.get("user", "postgres"), args.get("db", "postgres")
        password = args.get("password")
        host, port = self._endpoint(args)
        params = dict(args.get("params") or {})
        if args.get("driver", "raw") == "libpq":
            kw = dict(host=host, port=port, user=user, dbname=db,
                      sslmode=args.get("tls", "disable"), connect_timeout=10)
            if password is not None:
                kw["password"] = password
            if params.get("options"):
                kw["options"] = params.pop("options")
            if params.get("application_name"):
                kw["application_name"] = params.pop("application_name")
            try:
                con = psycopg2.connect(**kw)
            except psycopg2.Error as e:
                return {"ok": False, "error": _libpq_error(e)}
            con.autocommit = True
            self.conns[name] = LibpqConnection(con)
            rec = {"ok": True}
            if args.get("record_params"):
                rec["params"] = {p: con.get_parameter_status(p) for p in args["record_params"]}
            if args.get("tls", "disable") != "disable":
                rec["tls"] = bool(con.info.ssl_in_use)
            return rec
        try:
            conn = RawConnection(host, port).open()
        except OSError:
            return {"ok": False, "refused": True}
        self.conns[name] = conn
        rec: dict = {}
        tls = args.get("tls", "disable")
        if tls != "disable" and not host.startswith("/"):
            try:
                used = conn.start_tls()
            except Closed:
                return {"ok": False, "closed": True}
            if not used and tls == "require":
                conn.close()
                return {"ok": False, "tls": False}
            rec["tls"] = used
        try:
            rec.update(conn.login(user, db, password, params))
        except Closed:
            rec.update(ok=False, closed=True)
        except TimeoutError:
            rec.update(ok=False, timeout=True)
        if rec.get("ok") and args.get("record_params"):
            want = args["record_params"]
            rec["params"] = dict(sorted(conn.params.items())) if want == "all" else \
                {p: conn.params.get(p) for p in want}
        if not rec.get("ok"):
            rec["closed"] = self._closed_after(conn)
        return rec

    def _closed_after(self, conn: RawConnection) -> bool:
        """After a refused login: does the pooler close the socket (EOF or reset)?"""
        try:
            conn.read()
        except Closed:
            return True
        except TimeoutError:
            return False
        return False

    def step_query(self, args: dict) -> dict:
        conn = self._conn(args)
        sql = args["sql"]
        if isinstance(conn, LibpqConnection):
            return conn.run(sql, args.get("cancel_after"))
        before, closed = conn.pending()
        if before or closed:
            rec = {"before": summarize(before)} if before else {}
            if closed:
                return {**rec, "closed": True}
        else:
            rec = {}
        try:
            conn.send(fe_write.query(sql))
            if args.get("cancel_after") is not None:
                time.sleep(args["cancel_after"])
                conn.cancel()
            return {**rec, **summarize(conn.read_until_ready())}
        except Closed:
            return {**rec, "closed": True}

    def step_extended(self, args: dict) -> dict:
        """Parse (unless parse: no) / Bind / Describe portal / Execute / Sync in one batch."""
        conn = self._conn(args)
        name = args.get("name", "")
        data = b""
        if args.get("parse", True):
            data += fe_write.parse(name, args["sql"])
        if args.get("execute", True):
            params = [None if p is None else str(p) for p in args.get("params", [])]
            data += fe_write.bind("", name, params) + fe_write.describe("P") + fe_write.execute()
        if args.get("close"):
            data += fe_write.close("S", name)
        data += fe_write.sync()
        try:
            conn.send(data)
            return summarize(conn.read_until_ready())
        except Closed:
            return {"closed": True}

    def step_copy_in(self, args: dict) -> dict:
        conn = self._conn(args)
        if isinstance(conn, LibpqConnection):
            import io
            cur = conn.con.cursor()
            try:
                cur.copy_expert(args["sql"], io.StringIO(args.get("data", "")))
                return {"tags": [cur.statusmessage]}
            except psycopg2.Error as e:
                return {"error": _libpq_error(e)}
        try:
            conn.send(fe_write.query(args["sql"]))
            msgs = []
            while True:
                kind, payload = conn.read()
                msgs.append((kind, payload))
                if kind in ("G", "Z"):
                    break
            if msgs[-1][0] == "G":
                if args.get("fail"):
                    conn.send(fe_write.copy_fail(args["fail"]))
                else:
                    conn.send(fe_write.copy_data(args.get("data", "").encode()) + fe_write.copy_done())
                msgs += conn.read_until_ready()
            return summarize(msgs)
        except Closed:
            return {"closed": True}

    def step_copy_out(self, args: dict) -> dict:
        return self.step_query(args)

    def step_send(self, args: dict) -> dict:
        """Raw bytes on a connection, then the answer: the messages read until ReadyForQuery,
        EOF or ``read_for`` seconds of silence. ``data`` is ``hex:...`` or text (YAML escapes
        such as \\x00 allowed, sent as latin-1); or ``type`` (one letter) and ``payload``
        (text as for data) make one message with its length computed."""
        conn = self._conn(args)
        if "type" in args:
            payload = _bytes(args.get("payload", ""))
            raw = args["type"].encode() + struct.pack("!I", len(payload) + 4) + payload
        else:
            raw = _bytes(args["data"])
        return self._exchange(conn, raw, args.get("read_for", 2.0))

    def step_startup(self, args: dict) -> dict:
        """A StartupMessage on an ``open`` connection (``protocol`` "3.0" by default, any
        ``params``), then the answer up to the first authentication request, error or
        ReadyForQuery."""
        conn = self._conn(args)
        major, minor = (int(x) for x in str(args.get("protocol", "3.0")).split("."))
        params = {"user": args.get("user", "postgres"), "database": args.get("db", "postgres"),
                  **(args.get("params") or {})}
        body = struct.pack("!HH", major, minor) + b"".join(
            k.encode() + b"\0" + str(v).encode() + b"\0" for k, v in params.items()) + b"\0"
        return self._exchange(conn, struct.pack("!I", len(body) + 4) + body,
                              args.get("read_for", 2.0), stop="RZE")

    def _exchange(self, conn: RawConnection, raw: bytes, read_for: float, stop: str = "Z") -> dict:
        msgs: list = []
        rec: dict = {}
        try:
            conn.send(raw)
            conn.sock.settimeout(read_for)
            while True:
                kind, payload = conn.read()
                msgs.append((kind, payload))
                if kind == "K":
                    conn.key = struct.unpack("!II", payload[:8])
                if kind in stop and not (kind == "R" and payload[:4] == b"\0\0\0\0"):
                    break
        except Closed:
            rec["closed"] = True
        except TimeoutError:
            rec["silent"] = True
            if conn.buf:                       # e.g. the one-byte answer to an SSL/GSSENC request
                rec["unframed"] = bytes(conn.buf).decode("latin-1")
                conn.buf.clear()
        finally:
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
        rec["messages"] = "".join(k for k, _ in msgs)
        rec.update(summarize(msgs))
        auth = [struct.unpack("!I", p[:4])[0] for k, p in msgs if k == "R" and len(p) >= 4]
        if auth:
            rec["auth_codes"] = auth
        return rec

    def step_open(self, args: dict) -> dict:
        """A bare socket with no startup packet yet (for raw startup bytes)."""
        host, port = self._endpoint(args)
        try:
            self.conns[args.get("as", "c")] = RawConnection(host, port).open()
        except OSError:
            return {"refused": True}
        return {}

    def step_disconnect(self, args: dict) -> dict:
        conn = self.conns.pop(args.get("on", "c"), None)
        if conn is None:                     # its connect was refused: nothing to close
            return {"absent": True}
        conn.close(abrupt=bool(args.get("abrupt")))
        return {}

    def step_alive(self, args: dict) -> dict:
        return {"alive": self._conn(args).alive()}

    def step_console(self, args: dict) -> dict:
        """One console command on a new connection: columns, and rows unless ``rows: count``
        (then only how many) or ``rows: none``; ``mask`` columns show as '*'."""
        conn = RawConnection(self.target.host, self.target.port).open()
        try:
            login = conn.login(args.get("user", "console"), args.get("db", "console"),
                               args.get("password"))
            if not login.get("ok"):
                return {"login": login}
            conn.send(fe_write.query(args["sql"]))
            rec = summarize(conn.read_until_ready())
        except Closed:
            return {"closed": True}
        finally:
            conn.close()
        mode = args.get("rows", "all")
        mask = set(args.get("mask", []))
        if "rows" in rec:
            if mode == "count":
                rec["rows"] = len(rec["rows"])
            elif mode == "none":
                rec.pop("rows")
            elif mask and "columns" in rec:
                idx = [i for i, c in enumerate(rec["columns"]) if c in mask]
                rec["rows"] = [["*" if i in idx else v for i, v in enumerate(r)] for r in rec["rows"]]
        return rec

    def step_signal(self, args: dict) -> dict:
        sig = getattr(signal_mod, "SIG" + args["sig"].upper().removeprefix("SIG"))
        self.target.signal(sig)
        time.sleep(args.get("settle", 0.5))
        return {"running": self.target.running()}

    def step_reload(self, args: dict) -> dict:
        self.target.reload(args.get("rules"), args.get("globals"))
        time.sleep(args.get("settle", 1.0))
        return {"running": self.target.running()}

    def step_wait(self, args) -> dict:
        time.sleep(float(args if not isinstance(args, dict) else args.get("seconds", 0.5)))
        return {}

    # -- driver ---------------------------------------------------------------------------------
    def run(self, steps: list[dict]) -> list[dict]:
        for i, step in enumerate(steps, 1):
            if not isinstance(step, dict) or len(step) != 1:
                raise StepError(f"step {i}: one mapping with one key expected, got {step!r}")
            kind, args = next(iter(step.items()))
            args = args if args is not None else {}
            if isinstance(args, dict) and True in args:
                args["on"] = args.pop(True)        # YAML 1.1 reads a bare `on:` key as true
            method = getattr(self, "step_" + kind, None)
            if method is None:
                raise StepError(f"step {i}: unknown step {kind!r}")
            label = f"{i} {kind}"
            if isinstance(args, dict) and (args.get("on") or args.get("as")):
                label += " " + (args.get("on") or args.get("as"))
            if self.target.kind == "postgres" and kind in POOLER_ONLY:
                rec = {"skipped": True}
            else:
                start = time.monotonic()
                try:
                    rec = method(args)
                except TimeoutError:
                    rec = {"timeout": True}
                if isinstance(args, dict) and args.get("timing"):
                    took = time.monotonic() - start
                    rec["took"] = "<0.5s" if took < 0.5 else "0.5-3s" if took < 3 else ">3s"
            self.records.append({"step": label, **rec})
        alive = {}
        for name, conn in sorted(self.conns.items()):
            alive[name] = conn.alive()
        if alive:
            self.records.append({"step": "end", "alive": alive})
        if self.target.kind == "pooler":
            self.records.append({"step": "pooler", "running": self.target.running()})
        return self.records

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.close()
            except Exception:
                pass
        self.conns.clear()
