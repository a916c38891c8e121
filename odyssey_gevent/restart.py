"""Online restart on SIGUSR2 (mirrors Odyssey sources/restart_sync.c and the restart part of
sighandler.c).

The running process (the old one) starts a new process of the same program with the same
arguments and `ODY_INHERIT_PPID=<its pid>` in the environment. The new process does not
daemonize, binds the same TCP ports (`bindwith_reuseport yes`, so both listen at once) and,
once it listens, sends SIGTERM to the old one. The old one then hands the ports over and drains
its clients like a graceful shutdown (system.graceful_shutdown), ejecting idle clients at the
`conn_drop_options` rate. If the new process exits before that, the old one keeps serving.

The hand-over closes a gap C Odyssey leaves open: connections the kernel already queued on the
old listening socket are reset when that socket closes. So before closing, the old process
attaches a classic BPF program to each port's SO_REUSEPORT group that sends every new
connection to the socket that joined after its own (the new process's), keeps accepting for
`HANDOVER_GRACE_MS` so that handshakes already in flight land and are served, and only then
closes. The new process removes the program once none of the sockets that listened on its
ports before it bound its own (old_sockets(): the old side's) is left, or the old process has
exited. A unix socket cannot
be shared that way: the new process binds its own beside the old one's file and renames it over
that file (listen_unix_over), and the old one serves what was queued on its socket.

With `processes N` the same happens group to group (supervisor.py): the program steers to index
T, the old side's socket count on the address (our_listeners()), the first socket the new side
added after the old ones. The kernel fills a closed socket's slot with the group's last socket
and only old sockets close, so every slot from T up holds a new socket; slot T exists while the
new side has more sockets than old ones have closed. So a new side with at least T sockets is
steered exactly whatever the order the old listeners close in; a smaller new group (or a single
process after a group) binds each address supervisor.listeners_for(T, M) times in each process
and keeps those sockets (closing one once the kernel's hash uses it would reset its queue).
Once the last old one has closed, T is past the end (the kernel's hash: all are new) or a new
socket until the new processes remove the program.

While both sides run, each passes cancel keys it does not know to the other (supervisor.py);
a single process is a group of one, index 0, with a peer socket of its own during the restart.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import sys

import machinarium
from odyssey_gevent import supervisor

ENV = "ODY_INHERIT_PPID"
# set by instance.main: this process is the pooler command, which argv() can start again (a
# system machine run inside another program, e.g. a test, must not re-run that program)
STARTED_BY_MAIN = False
HANDOVER_GRACE_MS = 500     # the old listeners keep accepting this long after steering

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68
_BPF_RET_K = 0x06           # BPF_RET | BPF_K: return the constant


def inherited_ppid() -> int | None:
    """The old process's pid when this one was started by an online restart, else None."""
    value = os.environ.get(ENV)
    if not value:
        return None
    try:
        pid = int(value)
    except ValueError:
        return None
    return pid if pid > 1 else None


def argv() -> list[str]:
    """The command line that started this process, to run again: the interpreter and every
    argument it was given (`-m odyssey_gevent ...` or the `odyssey` script and its options)."""
    return [sys.executable, *sys.orig_argv[1:]]


def spawn(listeners: int) -> int:
    """Start the new process (posix_spawn: safe in a process with threads); returns its pid.
    `listeners`: how many sockets our side has on each TCP address (the new side opens at least
    as many). Our own sockets are close-on-exec, so it inherits only stdin/stdout/stderr."""
    env = dict(os.environ)
    env[ENV] = str(os.getpid())
    env[supervisor.OLD_LISTENERS_ENV] = str(listeners)
    env.pop(supervisor.ENV, None)
    env.pop(supervisor.LISTENERS_ENV, None)
    env.pop(supervisor.TAKEOVER_ENV, None)
    args = argv()
    # no blocked signals (a supervisor blocks the ones it waits for)
    return os.posix_spawn(args[0], args, env, setsigmask=())


def reap(pid: int) -> str | None:
    """None while `pid` (our child) runs; a description once it has ended."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "is gone"
    if done == 0:
        return None
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def parent_alive(ppid: int | None) -> bool:
    """Is the old process that started us still our parent (still running)?"""
    return ppid is not None and os.getppid() == ppid


def _reuseport_program(sock: socket.socket, index: int | None) -> None:
    if index is None:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
        return
    insn = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("=HBBI", _BPF_RET_K, 0, 0, index))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies
    # the program during the call, so the buffer only has to outlive it
    prog = struct.pack("@HP", 1, ctypes.addressof(insn))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog)


def our_listeners() -> int:
    """How many sockets our side (this process, or its whole group) has on each TCP address."""
    return supervisor.COUNT * supervisor.LISTENERS


def steer_to_successor(sock: socket.socket) -> None:
    """New connections on this port go to socket T of its SO_REUSEPORT group (T: our side's
    sockets on the address, our_listeners()): ours are 0 to T-1, the new side's joined after
    them (the module's docstring says why that holds while ours close). Raises OSError when the
    kernel refuses (no SO_REUSEPORT BPF support)."""
    _reuseport_program(sock, our_listeners())


def unsteer(sock: socket.socket) -> None:
    """Remove the program the old process left on this port's group (no error if none)."""
    try:
        _reuseport_program(sock, None)
    except OSError:
        pass


# -- the system machine's side (system.system_main) ----------------------------------------
POLL_MS = 500               # how often a restarting process looks at the other one


def _tcp(servers):
    return [s for s in servers if not s.unix_path and not s.io.closed]


def taking_over(instance) -> bool:
    """Does this process (or its group) take over from an old one that still runs?"""
    if supervisor.is_child():
        return supervisor.running(instance.partner) and supervisor.takeover_pid() == instance.partner
    return parent_alive(instance.restart_ppid)


def _listeners() -> dict[int, str]:
    """Every listening TCP socket of this network namespace: inode -> local address (as the
    kernel prints it). The kernel lists listening sockets first: reading stops at the first
    other one."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != "0A":
                        break
                    out[int(fields[9])] = fields[1]
        except OSError:
            pass
    return out


OLD_SOCKETS_ENV = "ODY_OLD_SOCKETS"     # set by a new group's supervisor: old_sockets() for its processes


def old_sockets() -> frozenset:
    """The listening TCP sockets (inodes) there were before this side bound any: on our
    addresses, the old side's. A process of a new group has them from its supervisor, which
    looked before it started any of them; a single process looks itself (it binds later).
    Counting the listeners on an address cannot tell them from ours: a process that looked
    before all of its group listened counted the old side's socket as one of its group's, and
    removed the steering the old side attached a moment later (a client loop then saw
    connections reset as the old listener closed)."""
    if supervisor.is_child():
        value = os.environ.get(OLD_SOCKETS_ENV, "")
        return frozenset(int(x) for x in value.split(",") if x.isdigit())
    return frozenset(_listeners())


def old_ones_listen(servers, old) -> bool:
    """Does one of the `old` sockets (old_sockets()) still listen on one of our TCP addresses?"""
    listeners = _listeners()
    ours = set()
    for s in _tcp(servers):
        try:
            address = listeners.get(os.fstat(s.io.sock.fileno()).st_ino)
        except OSError:
            continue
        if address is not None:
            ours.add(address)
    return any(address in ours for inode, address in listeners.items() if inode in old)


def request(instance) -> None:
    """SIGUSR2: start the new process, unless that is off or one restart is already under way."""
    log = instance.logger
    log.info("restart", None, None, "online restart signal received")
    if not instance.config.enable_online_restart:
        log.error("restart", None, None, "online restart signal ignored: enable_online_restart is no")
        return
    if not STARTED_BY_MAIN:
        log.error("restart", None, None, "online restart signal ignored: this process was not started "
                  "as the odyssey command")
        return
    if supervisor.is_child():
        log.error("restart", None, None, "online restart signal ignored: send it to the supervisor (pid %d), "
                  "which restarts the whole group", supervisor.SUPERVISOR)
        return
    if instance.successor is not None:
        log.error("restart", None, None, "online restart signal ignored: already starting the new process %d",
                  instance.successor)
        return
    if parent_alive(instance.restart_ppid):
        log.error("restart", None, None, "online restart signal ignored: the old process %d is still draining",
                  instance.restart_ppid)
        return
    try:
        pid = spawn(our_listeners())
    except OSError as e:
        log.error("restart", None, None, "cannot start the new process (%s): this one keeps serving", e)
        return
    instance.successor = pid
    instance.partner = pid               # cancel keys of the new side's clients go there
    supervisor.start_peer(instance)      # and the new side passes ours here
    log.info("restart", None, None, "new process started, pid %d: %s", pid, " ".join(argv()))


def announce(instance) -> None:
    """The new process listens: tell the old one (our parent) to hand over and drain."""
    ppid = instance.restart_ppid
    if ppid is None:
        return
    if not parent_alive(ppid):
        instance.restart_ppid = instance.partner = None
        return
    instance.logger.info("restart", None, None, "listening; sending SIGTERM to the old process %d", ppid)
    try:
        os.kill(ppid, signal.SIGTERM)
    except OSError:
        instance.restart_ppid = None


def poll(instance, servers) -> int | None:
    """Called by the signal loop while a restart is under way; returns the next wait (ms), or
    None when there is nothing left to watch."""
    log = instance.logger
    child = supervisor.is_child()
    if instance.successor is not None and not child:   # a group's new supervisor is not our child
        ended = reap(instance.successor)
        if ended is not None:
            log.error("restart", None, None, "the new process %d %s before taking over: this one keeps serving",
                      instance.successor, ended)
            instance.successor = None
            instance.partner = None
    if instance.steered and (not taking_over(instance) or not old_ones_listen(servers, instance.old_sockets)):
        # the old listeners are closed: the kernel's hash spreads new connections again
        for s in _tcp(servers):
            unsteer(s.io.sock)
        instance.steered = False
        log.info("restart", None, None, "the old listeners are closed: steering removed")
    if instance.restart_ppid is not None and not parent_alive(instance.restart_ppid):
        log.info("restart", None, None, "the old process %d has exited: online restart complete",
                 instance.restart_ppid)
        instance.restart_ppid = None
        if not child:
            instance.partner = None          # no one left to pass cancels to
    if child and instance.partner is not None and instance.successor is None and not supervisor.running(
            instance.partner):
        instance.partner = None              # the old group has exited: no one to pass cancels to
    if (instance.successor is not None and not child) or instance.restart_ppid is not None or instance.steered \
            or (child and instance.partner is not None and instance.successor is None):
        return POLL_MS
    return None


def listen_unix_over(path: str, mode: int, backlog: int):
    """The new process's unix socket: bound beside the old one's file, then renamed over it, so
    that a client connecting by path reaches one socket or the other, never none. The old
    socket keeps the connections already queued on it and serves them."""
    tmp = f"{path}.{os.getpid()}.new"
    io = machinarium.listen_unix(tmp, mode, backlog)
    try:
        os.rename(tmp, path)
    except OSError:
        io.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return io


def hand_over(instance, servers) -> None:
    """The old process, on SIGTERM with a new process started: steer new connections to the new
    process's sockets and keep accepting HANDOVER_GRACE_MS, so that no connection the kernel
    queued here is reset when the listeners close (the caller closes them next)."""
    log = instance.logger
    log.info("restart", None, None, "handing the listen ports over to the new process %d", instance.successor)
    steered = 0
    for s in _tcp(servers):
        try:
            steer_to_successor(s.io.sock)
            steered += 1
        except OSError as e:
            log.error("restart", None, None, "cannot steer new connections on %s to the new process (%s): "
                      "connections queued here when it closes may be reset", s.name, e)
    if steered or any(s.unix_path for s in servers):
        machinarium.sleep(HANDOVER_GRACE_MS)
