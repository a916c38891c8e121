"""The application entry point: read the config, set up the logger, run the system machine in
the main thread and the worker pool (mirrors Odyssey sources/instance.c).
"""
from __future__ import annotations

import collections
import itertools
import os
import sys
import threading

import machinarium
from machinarium import tls
from odyssey_gevent import ODYSSEY_COMPAT_VERSION, __version__, auth_query, backend, restart, supervisor
from odyssey_gevent.config import dump, reader
from odyssey_gevent.config.model import ConfigError
from odyssey_gevent.logger import Logger
from odyssey_gevent.router import Router
from odyssey_gevent.rules import Rules


class Instance:
    def __init__(self, config, logger: Logger, config_path: str):
        self.config = config
        self.config_path = config_path
        self.logger = logger
        self.rules = Rules(config, reverse_dns=machinarium.reverse_dns)
        # the config reader resolved "auto"; the worker pool keeps the count it started with
        # (the router's lock depends on it)
        self.workers = config.workers
        self.router = Router(self)
        self._endpoint_rr = itertools.count()
        self._lock = threading.Lock()
        self.shutting_down = False   # SIGTERM/SIGINT: clients are closed at their next idle point
        self.shutdown_force = False  # graceful_shutdown_timeout_ms passed: close them wherever they are
        # online restart (restart.py): the old process that started this one, while it runs,
        # and the new process this one started on SIGUSR2
        self.restart_ppid = restart.inherited_ppid()
        self.successor: int | None = None
        # the other side of an online restart, for cancel keys: the old one in a new process, the
        # new one in an old process handing over (a group's supervisor or a single process)
        self.partner: int | None = supervisor.takeover_pid() if supervisor.is_child() else self.restart_ppid
        self.peer_coro = None     # serving our peer socket (supervisor.start_peer)
        # our listeners joined a port group whose old members steer to us: remove that at the end
        self.steered = restart.taking_over(self)
        # the old side's listening sockets, looked at before ours bind: the steering goes once
        # none of them listens on our addresses
        self.old_sockets = restart.old_sockets() if self.steered else frozenset()
        self._ejected = collections.deque()   # eject times of the restart drain (conn_drop_options)
        self.clients = 0          # accepted client sockets: the one count global client_max limits
        self._tls = {}
        self.verbose = False
        self.auth_query_cache = auth_query.SecretCache(config.auth_query_cache_ttl_ms)   # cleared on reload

    def next_endpoint(self) -> int:
        return next(self._endpoint_rr)

    def client_opened(self) -> bool:
        """Count a newly accepted client; False (not counted) when global client_max is reached."""
        client_max = self.config.client_max
        if self.workers <= 1:
            # one thread counts, the system machine's (the accept loop and every client's
            # cleanup), and greenlets switch only where one waits: no lock (its acquire and
            # release here and in client_closed cost about 1,000 instructions a login)
            if client_max and self.clients >= client_max:
                return False
            self.clients += 1
            return True
        lock = self._lock
        lock.acquire()          # not `with`: twice the cost, once per login each (see router.attach_idle)
        try:
            if client_max and self.clients >= client_max:
                return False
            self.clients += 1
            return True
        finally:
            lock.release()

    def client_closed(self) -> None:
        if self.workers <= 1:       # one thread counts: see client_opened
            self.clients -= 1
            return
        lock = self._lock
        lock.acquire()
        try:
            self.clients -= 1
        finally:
            lock.release()

    def may_eject(self) -> bool:
        """May the shutdown close one more idle client now? Always on SIGTERM; during an online
        restart drain as `conn_drop_options` allows: never with drop_enabled no, else at most
        `rate` clients per `interval_ms` (rate 0: no limit), so that the new process is not
        hit by every reconnect at once."""
        if self.successor is None:
            return True
        opts = self.config.conn_drop_options
        if not opts.drop_enabled:
            return False
        if opts.rate <= 0:
            return True
        now = machinarium.time_ms()
        with self._lock:
            ejected = self._ejected
            while ejected and ejected[0] <= now - opts.interval_ms:
                ejected.popleft()
            if len(ejected) >= opts.rate:
                return False
            ejected.append(now)
            return True

    def close_server_later(self, server) -> None:
        backend.close(self, server)

    def tls_context(self, listen):
        """The server-side SSLContext of a listen block (built once), or None when TLS is off.

        allow/prefer: TLS optional, no client certificate asked; require: a client certificate
        is asked for and verified when sent (if tls_ca_file is set); verify_ca/verify_full: a
        client certificate signed by tls_ca_file is mandatory."""
        if listen.tls == "disable" or not listen.tls_cert_file:
            return None
        ctx = self._tls.get(id(listen))
        if ctx is None:
            if listen.tls in ("verify_ca", "verify_full"):
                client_cert = "required"
            elif listen.tls == "require" and listen.tls_ca_file:
                client_cert = "optional"
            else:
                client_cert = "none"
            ctx = self._tls[id(listen)] = tls.server_context(listen.tls_cert_file, listen.tls_key_file,
                                                             ca_file=listen.tls_ca_file, client_cert=client_cert)
        return ctx

    def storage_tls_context(self, storage):
        """The client-side SSLContext for a storage's `tls` mode (libpq sslmode), or None."""
        if not tls.sslmode_tries_tls_first(storage.tls):
            return None
        ctx = self._tls.get(id(storage))
        if ctx is None:
            ctx = self._tls[id(storage)] = tls.client_context(storage.tls, ca_file=storage.tls_ca_file,
                                                              cert_file=storage.tls_cert_file,
                                                              key_file=storage.tls_key_file)
        return ctx

    def reload(self) -> bool:
        """SIGHUP/RELOAD: read the config again; on any error keep the running one."""
        try:
            config = reader.load(self.config_path)
        except ConfigError as e:
            for line in str(e).splitlines():
                self.logger.error("reload", None, None, "%s", line)
            self.logger.error("reload", None, None, "reload failed, the old config stays in use")
            return False
        for warning in config.warnings:
            self.logger.warning("reload", None, None, "%s", warning)
        self.logger.info("config", None, None, "importing changes from '%s'", self.config_path)
        # an unchanged rule keeps its identity, so its routes and server pools carry on
        old = {dump.rule_signature(r): r for r in self.config.rules}
        rules = []
        for r in config.rules:
            same = old.get(dump.rule_signature(r))
            if same is not None:
                same.order = r.order         # file position, for sequential_routing
            rules.append(same or r)
        config.rules = rules
        kept = {id(r) for r in config.rules}
        self.config = config
        self.rules = Rules(config, reverse_dns=machinarium.reverse_dns)
        self.auth_query_cache.ttl = config.auth_query_cache_ttl_ms / 1000.0
        self.auth_query_cache.clear()
        self.logger.configure(config.log_format, self.logger.to_stdout, config.log_file,
                              config.log_debug or self.verbose, self.logger.silent)
        obsolete = self.router.mark_obsolete(kept)
        self.logger.info("rules", None, None, "reconfigure rules: %d routes scheduled for removal", obsolete)
        return True


def set_priority(priority: int, logger) -> bool:
    """`priority N`: this process's nice value, as C's instance.c sets it before its threads start
    (each thread started afterwards inherits it); a failure (a negative value without the
    privilege) is logged and stops the start, as in C."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, priority)
    except OSError as e:
        logger.error("init", None, None, "failed to set process priority: %s", e.strerror)
        return False
    return True


def daemonize() -> None:
    """Detach from the terminal (daemonize yes); main writes pid_file afterwards, with the final pid."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def _supervise(config, logger, config_path: str) -> int:
    """processes N > 1: this process writes pid_file and runs the N pooler processes."""
    if config.pid_file:
        with open(config.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    logger.info("init", None, None, "odyssey-gevent %s (odyssey %s compatible), supervisor pid %d, processes %d",
                __version__, ODYSSEY_COMPAT_VERSION, os.getpid(), config.processes)
    try:
        return supervisor.supervise(config.processes, logger, config, config_path)
    finally:
        # after an online restart the pid file is the new supervisor's (it wrote its pid there)
        if config.pid_file and supervisor.GAVE_UP_FOR is not None and restart.parent_alive(supervisor.GAVE_UP_FOR):
            with open(config.pid_file, "w") as f:     # the old process keeps serving
                f.write(f"{supervisor.GAVE_UP_FOR}\n")
        elif config.pid_file and not supervisor.HANDED_OVER:
            try:
                os.unlink(config.pid_file)
            except OSError:
                pass


def main(config_path: str, console: bool = False, log_to_stdout: bool = False, silent: bool = False,
         verbose: bool = False, test_only: bool = False) -> int:
    try:
        config = reader.load(config_path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{config_path}: {e.strerror}", file=sys.stderr)
        return 1
    if test_only:
        print("config is valid")
        return 0
    # a process started by an online restart or by the supervisor is already detached
    child = supervisor.is_child()
    if config.daemonize and not console and restart.inherited_ppid() is None and not child:
        daemonize()
    logger = Logger(config.log_format, to_stdout=log_to_stdout or config.log_to_stdout,
                    log_file=config.log_file, debug=config.log_debug or verbose, silent=silent)
    if config.processes > 1 and not child:
        return _supervise(config, logger, config_path)
    if config.priority and not set_priority(config.priority, logger):
        return 1
    if config.pid_file and not child:
        with open(config.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    instance = Instance(config, logger, config_path)
    instance.verbose = verbose
    logger.info("init", None, None, "odyssey-gevent %s (odyssey %s compatible), pid %d",
                __version__, ODYSSEY_COMPAT_VERSION, os.getpid())
    if child:
        logger.info("init", None, None, "pooler process %d of %d (supervisor pid %d)", supervisor.INDEX,
                    supervisor.COUNT, supervisor.SUPERVISOR)
    for warning in config.warnings:
        logger.warning("config", None, None, "%s", warning)
    if config.log_config:
        for line in dump.dump_config(config).splitlines():
            logger.info("config", None, None, "%s", line)
    from odyssey_gevent import system
    restart.STARTED_BY_MAIN = True
    try:
        rc = machinarium.Machine("system", system.system_main, instance).run()
    finally:
        # after an online restart the pid file is the new process's (it wrote its pid there)
        if config.pid_file and instance.successor is None and not child:
            try:
                os.unlink(config.pid_file)
            except OSError:
                pass
    return rc if isinstance(rc, int) else 0
