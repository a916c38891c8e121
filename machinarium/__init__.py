"""machinarium: machines (OS threads with a gevent hub each), channels, coroutines and IO (mirrors Odyssey third_party/machinarium).

The runtime under the pooler. Names follow the C API: machine_create -> ``Machine``,
machine_channel_create -> ``Channel``, machine_msg -> ``Msg``, machine_io -> ``Io``,
machine_cond -> ``Cond``. No monkey patching anywhere: gevent modules are imported directly.

Rules
-----
- A machine is an OS thread running its own gevent hub. gevent objects (sockets, events,
  greenlets) belong to the machine that created them and never cross machines. What crosses
  machines: ``Channel`` (shared), ``Event``/``Cond.signal()``, ``Coroutine.cancel()``,
  ``Machine.call()/stop()/join()``, and file descriptors (``Io.detach()`` / ``Io.attach()``).
- Every blocking call takes ``timeout_ms`` (milliseconds; ``None`` = wait forever; <= 0 =
  expire at once unless the result is already there). Three distinct outcomes:
  ``TimedOut`` (not an OSError), ``Cancelled`` (a GreenletExit, so ``except Exception`` lets it
  pass; a plain GreenletExit means the same), and ``OSError`` for IO (``ConnectionClosed`` for
  EOF where bytes were required, ``ssl.SSLError`` for TLS). Exceptions: ``Event.wait`` and
  ``Cond.wait`` return False on timeout, like machine_cond_wait.
- An exception escaping a coroutine (or a plain greenlet / hub callback in a machine) is logged
  on the ``machinarium`` logger and passed to every callable in ``error_hooks``.

Machines
--------
``Machine(name, main, *args, shutdown_timeout_ms=1000, **kwargs)``
    ``.start()`` runs it in a new thread (returns when its hub is ready); ``.run()`` runs it in
    the calling thread (how the main thread hosts the "system" machine) and returns main's
    result. The machine lives while its main coroutine runs. ``.stop()`` (any thread, never
    blocks) cancels main. On the way out every remaining coroutine is cancelled and given
    ``shutdown_timeout_ms``, then the hub and its loop are destroyed (no fd leak).
    ``.join(timeout_ms)`` waits for the thread (cooperatively inside a machine, natively
    elsewhere); ``TimedOut``. ``.call(fn, *args)`` runs fn as a new coroutine inside that machine
    from any thread. ``.context`` is a machine-private dict; ``.running``, ``.stopping``.
``machine_create(name, main, *args)`` creates and starts; ``current_machine()``;
``stop_current()``; ``SYSTEM_SIGNALS`` are blocked in machine threads.

Channels and messages
---------------------
``Msg(type, data=None)`` (a NamedTuple). ``Channel(shared=True, limit=None, name=None)``:
``.write(msg) -> bool`` never blocks, from any thread (shared) or the same machine
(``shared=False``, cheaper: no watcher). With ``limit``, ``write`` returns False and does not
queue the message when ``limit`` messages are already queued (backpressure); else True.
``.read(timeout_ms=None)`` returns the next message or raises ``TimedOut``; one machine reads
(several of its coroutines may). ``.read_nowait()`` -> msg or None, ``len(ch)``, ``.close()``.

Coroutines and synchronisation
------------------------------
``Coroutine(fn, *args, name=None, **kwargs)`` / ``coroutine_create(...)`` starts at once.
``.join(timeout_ms)`` (same machine) returns fn's result, re-raises its exception, ``TimedOut``.
``.cancel()`` from any machine raises ``Cancelled`` inside it at its next switch (cross-thread
via run_callback_threadsafe). ``.dead``, ``.cancelled``, ``.exception``, ``.name``. A machine
runs its coroutines in the parked greenlets of ended ones when it has some (``IDLE_MAX``).
``sleep(ms)``. ``Event()``: manual reset; ``Cond()``: auto-reset (a wait consumes the signal; a
signal with no waiter is remembered). Both: ``.signal()`` from any thread, never blocks;
``.wait(timeout_ms) -> bool``. ``Wakeup()``: one coroutine's reusable wait for one wake-up,
no allocation per wait (the router's queue): ``.arm()`` in the waiter before publishing it,
``.wake()`` from any thread, ``.park(timeout_ms) -> bool``, ``.woken``.

IO
--
``listen(host, port, backlog=128, reuseport=False, reuseaddr=True) -> [Io]`` (one per resolved
address; host None/"*" = all), ``listen_unix(path, mode=0o777, backlog=128) -> Io`` (removes a
stale socket file, refuses a live one with EADDRINUSE),
``connect(host, port, timeout_ms=None) -> Io`` (IPv4/IPv6/name), ``connect_unix(path, timeout_ms)``.
``Io``: ``.accept(timeout_ms)``, ``.read(n, timeout_ms)`` exactly n bytes or
``ConnectionClosed``, ``.read_into(buf, timeout_ms, wait_first=False)`` -> count, 0 on EOF,
``.wait_readable(timeout_ms)`` -> True or ``TimedOut``, ``.pending()`` (TLS bytes buffered), ``.write(data, timeout_ms)`` (send()
loop, never gevent sendall), ``.writev(buffers, timeout_ms)``, ``.close()``,
``.set_nodelay()``, ``.set_keepalive(idle_s, interval_s, probes, user_timeout_ms)``,
``.set_linger0()``, ``.tls_server(ctx, timeout_ms)``, ``.tls_client(ctx, server_hostname,
timeout_ms)`` (handshake bounded; failure raises ssl.SSLError and closes the Io),
``.detach() -> fd`` and ``Io.attach(fd)`` to move a plain connection to another machine (a TLS
connection cannot move: MachineError), ``.peer``, ``.local``, ``.fileno()``, ``.sock`` (the
gevent socket, for the relay fast path), ``.is_tls``, ``.closed``. A timeout in the middle of
a read or write may leave the stream mid-message: close the connection.
TLS contexts: ``server_context(cert, key, ca_file, client_cert="none"|"optional"|"required")``,
``client_context(sslmode, ca_file, cert_file, key_file)`` with libpq sslmodes
disable/allow/prefer/require/verify-ca/verify-full (disable -> None);
``sslmode_requires_tls``, ``sslmode_tries_tls_first``.
``reverse_dns(addr) -> name | None``: reverse lookup confirmed by a forward lookup (hostname
rules), in the calling machine's resolver threadpool.
``wait_any(ios, timeout_ms=None) -> bitmask`` (machinarium.poll): wait until one of several
connections is readable (the relay waits on its client and server at once); 0 on timeout.

Signals (system machine, main thread only)
------------------------------------------
``SignalWatcher(channel=None, signals=DEFAULT_SIGNALS, msg_type="signal")`` delivers each
signal as ``Msg(msg_type, signum)`` on the channel; ``.wait(timeout_ms) -> signum``;
``.close()`` restores the previous handlers. ``signal_init()``, ``signal_wait(timeout_ms)``,
``signal_free()`` mirror the C calls. Outside the main thread they raise ``MachineError``.

Clock: ``time_ms()``, ``time_us()`` (monotonic).
"""
from ._clock import time_ms, time_us
from ._state import current_machine, error_hooks, watch_hub_errors
from .channel import Channel, Msg
from .coroutine import Cond, Coroutine, Event, Wakeup, coroutine_create, sleep
from .errors import Cancelled, ConnectionClosed, MachineError, TimedOut
from .io import Io, connect, connect_unix, listen, listen_unix, reverse_dns
from .poll import wait_any
from .machine import SYSTEM_SIGNALS, Machine, machine_create, stop_current
from .signals import (DEFAULT_SIGNALS, MSG_SIGNAL, SignalWatcher, signal_free, signal_init,
                      signal_wait)
from .tls import (client_context, normalize_sslmode, server_context, sslmode_requires_tls,
                  sslmode_tries_tls_first)

__all__ = [
    # errors
    "MachineError", "TimedOut", "Cancelled", "ConnectionClosed",
    # machines
    "Machine", "machine_create", "current_machine", "stop_current", "SYSTEM_SIGNALS",
    # channels
    "Msg", "Channel",
    # coroutines
    "Coroutine", "coroutine_create", "sleep", "Event", "Cond", "Wakeup",
    # io
    "Io", "listen", "listen_unix", "connect", "connect_unix", "reverse_dns", "wait_any",
    # tls
    "server_context", "client_context", "normalize_sslmode", "sslmode_requires_tls",
    "sslmode_tries_tls_first",
    # signals
    "SignalWatcher", "signal_init", "signal_wait", "signal_free", "DEFAULT_SIGNALS", "MSG_SIGNAL",
    # misc
    "time_ms", "time_us", "error_hooks", "watch_hub_errors",
]
