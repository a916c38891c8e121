"""`make run`: run odyssey-gevent on a config, with a throwaway PostgreSQL if none is reachable.

    python scripts/demo.py etc/odyssey.conf

1. Reads the config text and finds the first `storage "..." { type "remote" ... }` host and port
   (a small regex scan; it does not use the config reader).
2. If nothing accepts connections there and the host is local (127.0.0.1, localhost, ::1, or
   unset = the unix socket in unix_socket_dir), starts a throwaway PostgreSQL on that port
   (scripts/pgcluster.py) and says so.
3. Runs `python -m odyssey_gevent --console CONFIG` in the foreground, passing SIGINT, SIGTERM,
   SIGHUP, SIGUSR1 and SIGUSR2 through to it, and prints how to connect.
4. When the pooler exits (Ctrl-C / SIGTERM), stops it and destroys the throwaway cluster.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

LOCAL_HOSTS = {"", "127.0.0.1", "localhost", "::1"}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


# -- config scanning ---------------------------------------------------------------------------------
def strip_comments(text: str) -> str:
    """Drop `#` comments that are outside double-quoted strings (the only quoting Odyssey has)."""
    out = []
    for line in text.splitlines():
        in_str, cut = False, len(line)
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == "\\" and in_str:
                i += 2
                continue
            if ch == '"':
                in_str = not in_str
            elif ch == "#" and not in_str:
                cut = i
                break
            i += 1
        out.append(line[:cut])
    return "\n".join(out)


def blocks(text: str, keyword: str):
    """Yield (name or None, body) of every top-level-or-nested `keyword ["name"] { ... }` block."""
    for m in re.finditer(r'\b' + keyword + r'\b\s*(?:"([^"]*)")?\s*\{', text):
        depth, i = 1, m.end()
        in_str = False
        while i < len(text) and depth:
            ch = text[i]
            if ch == '"' and text[i - 1] != "\\":
                in_str = not in_str
            elif not in_str:
                depth += ch == "{"
                depth -= ch == "}"
            i += 1
        yield m.group(1), text[m.end():i - 1]


def _top_level(body: str) -> str:
    """The body without nested { ... } blocks (so a watchdog's keywords are not mistaken)."""
    out, depth = [], 0
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def parse_endpoint(host: str, default_port: int | None) -> tuple[str, int | None]:
    """First endpoint of an Odyssey storage host list: `[tcp://|unix://](host|[host])[:port][:az]`."""
    first = host.split(",")[0].strip()
    first = re.sub(r"^(tcp|unix)://", "", first)
    m = re.match(r"^\[([^\]]*)\](.*)$", first)
    if m:
        name, rest = m.group(1), m.group(2)
    else:
        name, _, rest = first.partition(":")
        rest = ":" + rest if rest else ""
    port = default_port
    for part in rest.split(":")[1:]:
        if part[:1].isdigit():
            port = int(part)
            break
    return name, port


def find_storage(text: str) -> dict | None:
    """{'name', 'host', 'port', 'unix_socket_dir'} of the first remote storage, or None."""
    text = strip_comments(text)
    usd = re.search(r'^\s*unix_socket_dir\s+"([^"]*)"', text, re.M)
    for name, body in blocks(text, "storage"):
        top = _top_level(body)
        if not re.search(r'\btype\s+"remote"', top):
            continue
        host_m = re.search(r'\bhost\s+"([^"]*)"', top)
        port_m = re.search(r'\bport\s+(\d+)', top)
        port = int(port_m.group(1)) if port_m else None
        host, port = parse_endpoint(host_m.group(1), port) if host_m else ("", port)
        return dict(name=name, host=host, port=port or 5432,
                    unix_socket_dir=usd.group(1) if usd else None)
    return None


def find_listen(text: str) -> tuple[str, int]:
    text = strip_comments(text)
    for _, body in blocks(text, "listen"):
        top = _top_level(body)
        host_m = re.search(r'\bhost\s+"([^"]*)"', top)
        port_m = re.search(r'\bport\s+(\d+)', top)
        return (host_m.group(1) if host_m else ""), (int(port_m.group(1)) if port_m else 6432)
    return "127.0.0.1", 6432


def reachable(host: str, port: int, sockdir: str | None) -> bool:
    try:
        if host:
            with socket.create_connection((host, port), timeout=1):
                return True
        if sockdir:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(os.path.join(sockdir, f".s.PGSQL.{port}"))
                return True
    except OSError:
        pass
    return False


# -- running ------------------------------------------------------------------------------------------
def start_cluster(storage: dict):
    from scripts.pgcluster import PgCluster
    host = storage["host"]
    cluster = PgCluster(port=storage["port"], host=host or "127.0.0.1")
    if host == "localhost":
        cluster.host = "localhost"          # listen on both 127.0.0.1 and ::1
    if not host and storage["unix_socket_dir"]:
        cluster.sockdir = storage["unix_socket_dir"]   # the pooler looks for the socket there
    cluster.init().start()
    try:
        cluster.create_roles()
    except RuntimeError as e:                          # roles are a convenience, not a must
        print(f"demo: could not create the test roles: {e}", file=sys.stderr)
    where = f"{host}:{cluster.port}" if host else f"unix socket {cluster.sockdir}/.s.PGSQL.{cluster.port}"
    print(f"demo: nothing answered at {where}; started a throwaway PostgreSQL there "
          f"(data in {cluster.dir}, superuser postgres, trust auth); it is removed on exit", flush=True)
    return cluster


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    config = argv[0]
    with open(config) as f:
        text = f.read()
    storage = find_storage(text)
    cluster = None
    child = None
    pending_exit = []

    def forward(signum, frame):
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        else:
            pending_exit.append(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        if storage is None:
            print("demo: no remote storage in the config; starting the pooler as is", flush=True)
        elif reachable(storage["host"], storage["port"], storage["unix_socket_dir"]):
            print(f"demo: PostgreSQL answers at {storage['host'] or storage['unix_socket_dir']}:"
                  f"{storage['port']}", flush=True)
        elif storage["host"] in LOCAL_HOSTS:
            cluster = start_cluster(storage)
        else:
            print(f"demo: warning: nothing answers at {storage['host']}:{storage['port']} and it is "
                  f"not local; the pooler will fail to reach its storage", flush=True)
        if pending_exit:
            return 130
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        # its own process group: a terminal Ctrl-C reaches the pooler once, through us
        child = subprocess.Popen([sys.executable, "-m", "odyssey_gevent", "--console", config],
                                 env=env, process_group=0)
        lhost, lport = find_listen(text)
        connect_host = "127.0.0.1" if lhost in ("", "*", "0.0.0.0") else lhost
        announced = False
        while child.poll() is None:
            if not announced and reachable(connect_host, lport, None):
                announced = True
                print(f"\ndemo: odyssey-gevent (pid {child.pid}) listens on {connect_host}:{lport}\n"
                      f"  connect:  psql -h {connect_host} -p {lport} -U postgres postgres\n"
                      f"  console:  psql -h {connect_host} -p {lport} -U console console -c 'show pools'"
                      f"  (if the config has a console rule)\n"
                      f"  stop:     Ctrl-C\n", flush=True)
            try:
                child.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        return child.returncode if child.returncode >= 0 else 128 - child.returncode
    finally:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_IGN)
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if cluster is not None:
            print("demo: stopping the throwaway PostgreSQL", flush=True)
            cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
