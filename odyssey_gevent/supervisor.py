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
`odyssey-gevent.<supervisor pid>.<index>`, that takes nothing but CancelRequests (and, from the
supervisor alone, the order to hand the ports over).

Online restart (SIGUSR2 to the supervisor; restart.py has the one-process case): the supervisor
starts the program again (the new supervisor, `ODY_INHERIT_PPID=<its pid>`), which starts its
own N processes with `ODY_TAKEOVER=<old supervisor pid>`. Each tells its supervisor it listens
(READY_SIGNAL); once all do, the new supervisor sends SIGTERM to the old one, which passes the
hand-over order to each of its processes over their peer sockets: each steers new connections
to the new group (restart.hand_over), closes its listeners and drains. The new processes remove
the steering program once only their own listeners are left on their ports (a new group smaller
than the old side binds each address more than once in each process: LISTENERS). During the
overlap a cancel key unknown to the process that owns its index in one group is passed to the
process of the same index in the other group (the "partner" group); a single process on either
side is a group of one, index 0, whose keys carry no index (pass_to_partner).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import time

ENV = "ODY_PROCESS"
TAKEOVER_ENV = "ODY_TAKEOVER"   # a process of a new group: the old group's supervisor pid
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


# Online restart to a smaller group (restart.py's docstring): the steering stays exact only if
# the new side opens at least as many sockets on each TCP address as the old side had, so each
# of its processes may bind each address more than once (all accepted by that process).
LISTENERS_ENV = "ODY_LISTENERS"         # set by the supervisor: sockets per TCP address, each process
OLD_LISTENERS_ENV = "ODY_OLD_LISTENERS"  # set by restart.spawn: the old side's sockets per TCP address
MAX_LISTENERS = 256 * 256


def listeners_for(old_total: int, count: int) -> int:
    """Sockets per TCP address for each of `count` processes taking over from a side that had
    `old_total`: together at least as many (the fewest such), and the same for every process so
    that the kernel's hash still gives each process an equal share."""
    return max(1, -(-old_total // count))


def _env_count(name: str) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return 0
    return value if 0 < value <= MAX_LISTENERS else 0


def old_listeners() -> int:
    """Started by an online restart: how many sockets the old side had per TCP address (0 when
    not told)."""
    return _env_count(OLD_LISTENERS_ENV)


# this process's sockets per TCP address: its supervisor's word, or (a single process started by
# an online restart, restart.ENV) as many as the old side had
LISTENERS = (max(1, _env_count(LISTENERS_ENV)) if _ID
             else listeners_for(old_listeners(), 1) if os.environ.get("ODY_INHERIT_PPID") else 1)


def is_child() -> bool:
    return _ID is not None


def group_id() -> int:
    """The id in our peer sockets' names: the supervisor's pid, or a single process's own (a
    group of one, index 0), read when asked (a daemon forks after this module is imported)."""
    return SUPERVISOR if _ID else os.getpid()


def owner(secret: int) -> int:
    """The index of the process that gave out this cancel secret."""
    return (secret >> 24) & 0xFF


def peer_address(index: int, group: int | None = None) -> str:
    """The peer socket of process `index` of the group run by supervisor `group` (ours), or of
    the single process `group` (index 0)."""
    return f"\0odyssey-gevent.{group_id() if group is None else group}.{index}"


def takeover_pid() -> int | None:
    """In a process of a group started by an online restart: the old group's supervisor."""
    if _ID is None:
        return None
    try:
        pid = int(os.environ.get(TAKEOVER_ENV, ""))
    except ValueError:
        return None
    return pid if pid > 1 else None


def running(pid: int | None) -> bool:
    """Is `pid` a running process (not a zombie)?"""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# -- the supervisor --------------------------------------------------------------------------
_FORWARDED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
_WATCHED = set(_FORWARDED) | {signal.SIGUSR2, signal.SIGCHLD}
# a pooler process tells its supervisor that it listens (a real-time signal: no one else sends it)
READY_SIGNAL = signal.SIGRTMIN + 1


def _spawn(argv: list[str], index: int, count: int, takeover: int | None = None, listeners: int = 1,
           old_sockets: str = "") -> int:
    from odyssey_gevent import restart
    env = dict(os.environ)
    env.pop(restart.OLD_SOCKETS_ENV, None)
    if old_sockets:
        env[restart.OLD_SOCKETS_ENV] = old_sockets
    env[ENV] = f"{index}/{count}/{os.getpid()}"
    env[LISTENERS_ENV] = str(listeners)
    env.pop("ODY_INHERIT_PPID", None)
    env.pop(OLD_LISTENERS_ENV, None)
    env.pop(TAKEOVER_ENV, None)
    if takeover is not None:
        env[TAKEOVER_ENV] = str(takeover)
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


def tell_listening() -> None:
    """A pooler process listens: its supervisor counts it (an online restart waits for all)."""
    if _ID is not None:
        try:
            os.kill(SUPERVISOR, READY_SIGNAL)
        except OSError:
            pass


HANDED_OVER = False      # set by supervise: an online restart gave the ports (and pid_file) away
GAVE_UP_FOR: int | None = None   # set by supervise: a new group that could not take over from this pid


def supervise(count: int, logger, config=None, config_path: str | None = None) -> int:
    """Run the pooler as `count` processes until they have all exited; the exit code is 0 when
    every one exited 0 once asked to stop. With `config` (its enable_online_restart, re-read
    from `config_path` on SIGHUP), SIGUSR2 replaces the whole group (the module's docstring)."""
    global HANDED_OVER, GAVE_UP_FOR
    from odyssey_gevent import restart
    argv = restart.argv()
    watched = _WATCHED | {READY_SIGNAL}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    children: dict[int, int] = {}         # pid -> index
    started: dict[int, float] = {}        # index -> last start (monotonic)
    stopping = False
    rc = 0
    # started by an online restart: the old process (a supervisor or a single pooler) is our parent
    old = restart.inherited_ppid()
    takeover = old if old is not None and os.getppid() == old else None
    # each process binds each TCP address this many times: as many sockets as the old side had
    # (steering stays exact, restart.py), kept for the group's life (closing one would reset the
    # connections the kernel's hash queued on it)
    listeners = listeners_for(old_listeners(), count) if takeover is not None else 1
    # the old side's listening sockets, looked at before any of ours binds (restart.old_sockets)
    old_sockets = ",".join(map(str, sorted(restart.old_sockets()))) if takeover is not None else ""
    announced = False                     # the old one was told to hand over
    listening: set[int] = set()           # pids that told us they listen
    successor = None                      # the new supervisor started on SIGUSR2
    handing_over = False

    def log_info(fmt, *args, context="supervisor"):
        logger.info(context, None, None, fmt, *args)

    def log_error(fmt, *args, context="supervisor"):
        logger.error(context, None, None, fmt, *args)

    def start(index: int) -> None:
        pid = _spawn(argv, index, count, takeover, listeners, old_sockets)
        children[pid] = index
        started[index] = time.monotonic()
        log_info("pooler process %d started, pid %d", index, pid)

    def stop_all(sig: int = signal.SIGTERM) -> None:
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    if listeners > 1:
        log_info("the old side had %d listeners per address, more than %d processes: each process binds "
                 "each address %d times", old_listeners(), count, listeners, context="restart")
    for i in range(count):
        start(i)
    pending: list[int] = []               # indexes to start again (after a crash)
    deadline = None
    while children or (pending and not stopping):
        info = signal.sigtimedwait(watched, 0.5)
        sig = info.si_signo if info else None
        if sig == READY_SIGNAL:
            if info.si_pid in children:
                listening.add(info.si_pid)
            if (takeover is not None and not announced and not stopping and len(children) == count
                    and listening >= set(children)):
                announced = True
                if os.getppid() == takeover:
                    log_info("all %d pooler processes listen; sending SIGTERM to the old process %d", count,
                             takeover, context="restart")
                    try:
                        os.kill(takeover, signal.SIGTERM)
                    except OSError:
                        pass
        elif sig == signal.SIGHUP and successor is not None:
            log_info("SIGHUP received: performing an online restart now, SIGHUP is ignored")
        elif sig in (signal.SIGTERM, signal.SIGINT) and successor is not None and not stopping:
            # the new supervisor listens (or the operator stops us during the restart): each
            # process steers new connections to the new group, closes its listeners and drains
            handing_over = True
            log_info("%s received: handing the listen ports over to the new supervisor %d",
                     signal.Signals(sig).name, successor, context="restart")
            for pid, index in list(children.items()):
                if not order_hand_over(index, successor):
                    log_error("cannot reach pooler process %d (pid %d) to hand over: sending it SIGTERM",
                              index, pid, context="restart")
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            stopping = True
            pending.clear()
            deadline = time.monotonic() + STOP_TIMEOUT_S
        elif sig in _FORWARDED:
            name = signal.Signals(sig).name
            log_info("%s received, passing it to %d pooler process(es)", name, len(children))
            stop_all(sig)
            if sig == signal.SIGUSR1:
                logger.reopen()           # the supervisor's own lines go to log_file too
            if sig == signal.SIGHUP and config_path:
                config = _reload(config, config_path)
            if sig in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping = True
                pending.clear()
                deadline = time.monotonic() + STOP_TIMEOUT_S
        elif sig == signal.SIGUSR2:
            log_info("online restart signal received", context="restart")
            if config is None or not config.enable_online_restart:
                log_error("online restart signal ignored: enable_online_restart is no", context="restart")
            elif stopping:
                log_error("online restart signal ignored: stopping", context="restart")
            elif successor is not None:
                log_error("online restart signal ignored: already starting the new supervisor %d", successor,
                          context="restart")
            elif takeover is not None and os.getppid() == takeover:
                log_error("online restart signal ignored: the old process %d is still draining", takeover,
                          context="restart")
            else:
                try:
                    successor = restart.spawn(count * listeners)
                    log_info("new supervisor started, pid %d: %s", successor, " ".join(argv), context="restart")
                except OSError as e:
                    log_error("cannot start the new supervisor (%s): this group keeps serving", e,
                              context="restart")
        while children or successor is not None:       # reap whatever has exited
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:      # no child left at all (the new supervisor neither)
                children.clear()
                successor = None
                break
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            if pid == successor:
                if handing_over:
                    log_error("the new supervisor %d exited with %d while this group hands over", pid, code,
                              context="restart")
                else:
                    log_error("the new supervisor %d exited with %d before taking over: this group keeps "
                              "serving", pid, code, context="restart")
                successor = None
                continue
            index = children.pop(pid, None)
            listening.discard(pid)
            if index is None:
                continue
            if code != 0 and stopping:    # a crash before is logged and the process started again
                rc = 1
            if stopping:
                log_info("pooler process %d (pid %d) exited with %d", index, pid, code)
            elif takeover is not None and not announced:
                # the new group cannot take over: stop it, the old one keeps serving
                log_error("pooler process %d (pid %d) exited with %d before the group took over from the old "
                          "process %d: giving up the online restart", index, pid, code, takeover, context="restart")
                stop_all()
                stopping = True
                pending.clear()
                rc = 1
                GAVE_UP_FOR = takeover
                deadline = time.monotonic() + STOP_TIMEOUT_S
            else:
                log_error("pooler process %d (pid %d) exited with %d: starting it again", index, pid, code)
                pending.append(index)
        if takeover is not None and announced and os.getppid() != takeover:
            log_info("the old process %d has exited: online restart complete", takeover, context="restart")
            takeover = None
        if not stopping:
            now = time.monotonic()
            for index in list(pending):
                if now - started.get(index, 0) >= RESTART_MIN_INTERVAL_S:
                    pending.remove(index)
                    start(index)
        elif deadline is not None and time.monotonic() > deadline:
            stop_all(signal.SIGKILL)
    HANDED_OVER = handing_over and successor is not None
    log_info("all pooler processes have exited")
    return rc


def _reload(config, path: str):
    """The supervisor's own copy of the config (for enable_online_restart): the new one, or the
    running one when the file has errors (each pooler process logs them)."""
    from odyssey_gevent.config import reader
    from odyssey_gevent.config.model import ConfigError
    try:
        return reader.load(path)
    except (ConfigError, OSError):
        return config


def order_hand_over(index: int, successor: int, timeout_s: float = 1.0) -> bool:
    """Tell our pooler process `index`, over its peer socket, to hand the ports over to the group
    of supervisor `successor` and drain."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(peer_address(index, os.getpid()))
        s.sendall(_CANCEL.pack(_CANCEL.size, HANDOVER_CODE, successor, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


# -- cancel requests between pooler processes -------------------------------------------------
_CANCEL = struct.Struct("!IIII")
CANCEL_CODE = 80877102
PARTNER_CODE = 80877103      # a CancelRequest from the other group (online restart): not passed on
HANDOVER_CODE = 80877110     # from our supervisor alone: hand the ports over to group <pid>, drain
_PEERCRED = struct.Struct("3i")


def forward_cancel(index: int, pid: int, key: int, timeout_s: float = 1.0, group: int | None = None,
                   code: int = CANCEL_CODE) -> bool:
    """Pass a CancelRequest to the pooler process that owns its key (a gevent socket: it only
    blocks this coroutine); `group`: that of another supervisor (an online restart's partner)."""
    from gevent import socket as gsocket
    s = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(peer_address(index, group))
        s.sendall(_CANCEL.pack(16, code, pid, key))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pass_to_partner(instance, pid: int, key: int) -> bool:
    """During an online restart, a cancel key that no process of our side knows may be one of
    the other side's: pass it to the process with the owner's index there (which does not pass
    it on again). A single process is a group of one, index 0, whose keys carry no index (their
    top byte is random): when the owner's index names no peer socket there, index 0 is tried."""
    partner = getattr(instance, "partner", None)
    if partner is None:
        return False
    index = owner(key)
    if forward_cancel(index, pid, key, group=partner, code=PARTNER_CODE):
        return True
    return index != 0 and forward_cancel(0, pid, key, group=partner, code=PARTNER_CODE)


def needs_peer(instance) -> bool:
    """Does this process listen on a peer socket? Always in a group; a single process while an
    online restart runs (started by one, or having started one), to pass cancels to the other
    side."""
    return _ID is not None or instance.restart_ppid is not None or instance.successor is not None


def start_peer(instance) -> None:
    """Open our peer socket and serve it (once), when needs_peer() says so."""
    if getattr(instance, "peer_coro", None) is not None or not needs_peer(instance):
        return
    import machinarium
    from gevent import socket as gsocket
    s = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(peer_address(INDEX))
        s.listen(128)
    except OSError as e:
        s.close()
        instance.logger.error("restart", None, None, "cannot open the peer socket for cancel requests (%s)", e)
        return
    instance.peer_coro = machinarium.coroutine_create(peer_main, instance, s, name="peer")


def stop_peer(instance) -> None:
    coro = getattr(instance, "peer_coro", None)
    if coro is not None:
        coro.cancel()
        instance.peer_coro = None


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
            if length != _CANCEL.size:
                return
            if code == CANCEL_CODE:
                cancel.forward(instance, pid, key, local_only=True)
            elif code == PARTNER_CODE:
                cancel.forward(instance, pid, key, local_only=True, from_partner=True)
            elif code == HANDOVER_CODE and pid > 1:
                sender = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[0]
                if sender != SUPERVISOR:
                    instance.logger.error("restart", None, None, "hand-over order from pid %d ignored: only the "
                                          "supervisor %d may send it", sender, SUPERVISOR)
                    return
                instance.logger.info("restart", None, None, "the supervisor hands this process's ports over to "
                                     "the new supervisor %d", pid)
                instance.successor = pid          # the drain ejects at the conn_drop_options pace
                instance.partner = pid            # cancel keys of the new group's clients go there
                os.kill(os.getpid(), signal.SIGTERM)
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
