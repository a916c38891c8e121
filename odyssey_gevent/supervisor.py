"""More than one core: `processes N` (ours; C Odyssey has no such keyword, see
docs/architecture.md "More than one core").

The process the operator starts becomes a supervisor: it starts N pooler processes of the same
program with `ODY_PROCESS=<index>/<count>/<supervisor pid>`, forwards SIGHUP, SIGUSR1, SIGTERM
and SIGINT to every one, starts again one that dies while the pooler is not stopping, and exits
when all have exited. Each pooler process is a whole pooler with its own routes, pools, stats
and console; they share the TCP ports through SO_REUSEPORT (the kernel spreads the connections).

A client's cancel key names its process: the top byte of the BackendKeyData secret is the
process index (`KEY_TAG`). A CancelRequest that reaches another process is passed on, as it is,
to the owner's peer socket: a unix socket in the abstract namespace,
`odyssey-gevent.<supervisor pid>.<index>`, that takes nothing but CancelRequests.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import time

ENV = "ODY_PROCESS"
_PR_SET_PDEATHSIG = 1
RESTART_MIN_INTERVAL_S = 1.0     # a process that keeps dying is started again at most this often
STOP_TIMEOUT_S = 3600            # the supervisor waits for its processes (each has its own timeout)


def _identity() -> tuple[int, int, int] | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    try:
        index, count, supervisor = (int(x) for x in value.split("/"))
    except ValueError:
        return None
    if not 0 <= index < count or count > 256:
        return None
    return index, count, supervisor


_ID = _identity()
INDEX = _ID[0] if _ID else 0             # this pooler process's index
COUNT = _ID[1] if _ID else 1             # how many pooler processes share the ports
SUPERVISOR = _ID[2] if _ID else None     # the supervisor's pid (None: a single process)
KEY_TAG = (INDEX << 24) if _ID else None  # or'ed into the cancel secret's top byte


def is_child() -> bool:
    return _ID is not None


def owner(secret: int) -> int:
    """The index of the process that gave out this cancel secret."""
    return (secret >> 24) & 0xFF


def peer_address(index: int) -> str:
    return f"\0odyssey-gevent.{SUPERVISOR}.{index}"


# -- the supervisor --------------------------------------------------------------------------
_FORWARDED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
_WATCHED = set(_FORWARDED) | {signal.SIGUSR2, signal.SIGCHLD}


def _spawn(argv: list[str], index: int, count: int) -> int:
    env = dict(os.environ)
    env[ENV] = f"{index}/{count}/{os.getpid()}"
    env.pop("ODY_INHERIT_PPID", None)
    # the process starts with the supervisor's signals blocked (a SIGHUP sent before it watches
    # signals would kill it): they stay pending until it unblocks them (signals_ready). In a
    # process group of its own: a terminal's Ctrl-C reaches it once, through the supervisor.
    return os.posix_spawn(argv[0], argv, env, setpgroup=0)


def signals_ready() -> None:
    """A pooler process now watches its signals: let the supervisor's through (pending ones too),
    and have the kernel send it SIGTERM (a graceful stop) if the supervisor dies."""
    if _ID is None:
        return
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass
    if os.getppid() != SUPERVISOR:        # it died before that
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(count: int, logger) -> int:
    """Run the pooler as `count` processes until they have all exited; the exit code is 0 when
    every one exited 0 once asked to stop."""
    from odyssey_gevent import restart
    argv = restart.argv()
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    children: dict[int, int] = {}         # pid -> index
    started: dict[int, float] = {}        # index -> last start (monotonic)
    stopping = False
    rc = 0

    def start(index: int) -> None:
        pid = _spawn(argv, index, count)
        children[pid] = index
        started[index] = time.monotonic()
        logger.info("supervisor", None, None, "pooler process %d started, pid %d", index, pid)

    for i in range(count):
        start(i)
    pending: list[int] = []               # indexes to start again (after a crash)
    deadline = None
    while children or (pending and not stopping):
        info = signal.sigtimedwait(_WATCHED, 0.5)
        sig = info.si_signo if info else None
        if sig in _FORWARDED:
            name = signal.Signals(sig).name
            logger.info("supervisor", None, None, "%s received, passing it to %d pooler process(es)",
                        name, len(children))
            for pid in list(children):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGUSR1:
                logger.reopen()           # the supervisor's own lines go to log_file too
            if sig in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping = True
                pending.clear()
                deadline = time.monotonic() + STOP_TIMEOUT_S
        elif sig == signal.SIGUSR2:
            logger.error("supervisor", None, None, "online restart signal ignored: not supported with "
                         "processes %d yet", count)
        while children:                   # reap whatever has exited
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code != 0 and stopping:    # a crash before is logged and the process started again
                rc = 1
            if stopping:
                logger.info("supervisor", None, None, "pooler process %d (pid %d) exited with %d",
                            index, pid, code)
            else:
                logger.error("supervisor", None, None, "pooler process %d (pid %d) exited with %d: "
                             "starting it again", index, pid, code)
                pending.append(index)
        if not stopping:
            now = time.monotonic()
            for index in list(pending):
                if now - started.get(index, 0) >= RESTART_MIN_INTERVAL_S:
                    pending.remove(index)
                    start(index)
        elif deadline is not None and time.monotonic() > deadline:
            for pid in list(children):
                os.kill(pid, signal.SIGKILL)
    logger.info("supervisor", None, None, "all pooler processes have exited")
    return rc


# -- cancel requests between pooler processes -------------------------------------------------
_CANCEL = struct.Struct("!IIII")
CANCEL_CODE = 80877102


def forward_cancel(index: int, pid: int, key: int, timeout_s: float = 1.0) -> bool:
    """Pass a CancelRequest to the pooler process that owns its key (a gevent socket: it only
    blocks this coroutine)."""
    from gevent import socket as gsocket
    s = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(peer_address(index))
        s.sendall(_CANCEL.pack(16, CANCEL_CODE, pid, key))
        return True
    except OSError:
        return False
    finally:
        s.close()


def peer_listener():
    """This process's peer socket (a gevent socket), or None for a single process."""
    if _ID is None:
        return None
    from gevent import socket as gsocket
    s = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(peer_address(INDEX))
    s.listen(128)
    return s


def peer_main(instance, sock) -> None:
    """Accept CancelRequests from the other pooler processes and carry them out here."""
    import machinarium
    from odyssey_gevent import cancel

    def serve(conn) -> None:
        try:
            conn.settimeout(1.0)
            data = b""
            while len(data) < _CANCEL.size:
                chunk = conn.recv(_CANCEL.size - len(data))
                if not chunk:
                    return
                data += chunk
            length, code, pid, key = _CANCEL.unpack(data)
            if length == _CANCEL.size and code == CANCEL_CODE:
                cancel.forward(instance, pid, key, local_only=True)
        except OSError:
            pass
        finally:
            conn.close()

    try:
        while True:
            conn, _ = sock.accept()
            machinarium.coroutine_create(serve, conn, name="peer cancel")
    finally:
        sock.close()
