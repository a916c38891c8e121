"""A primary and a streaming replica for the storage topology tests (test_topology.py).

`PgPair.make()` runs initdb for the primary (wal_level logical, so pg_recvlogical works too),
starts it, clones the replica with `pg_basebackup -R` and starts that on another free port.
Both are scripts/pgcluster.py clusters: as the `postgres` OS user when run as root, fsync off,
small shared_buffers. `stop_primary()` and `promote()` are the failover steps; `destroy()`
stops both and removes their directories.
"""
from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time

from scripts.pgcluster import PgCluster

# what the pair adds to postgresql.conf and pg_hba.conf of the primary (the replica copies both)
_PRIMARY_CONF = """
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
shared_buffers = 16MB
max_connections = 60
wal_keep_size = 64MB
"""
_REPLICATION_HBA = """
local   replication  all               trust
host    replication  all  127.0.0.1/32 trust
host    replication  all  ::1/128      trust
"""


class PgPair:
    def __init__(self):
        self.primary = PgCluster()
        self.replica = None

    def make(self) -> "PgPair":
        p = self.primary
        p.init()
        p._append_as_owner(os.path.join(p.datadir, "postgresql.conf"), _PRIMARY_CONF)
        p._append_as_owner(os.path.join(p.datadir, "pg_hba.conf"), _REPLICATION_HBA)
        p.start()
        r = PgCluster()
        r.datadir = os.path.join(r.dir, "data")
        if r.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(r.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(r.dir, 0o755)
        r.run([os.path.join(r.bindir, "pg_basebackup"), "-D", r.datadir, "-R", "-X", "stream",
               "-h", p.sockdir, "-p", str(p.port), "-U", "postgres", "--no-sync", "-c", "fast"])
        # the clone carries the primary's port and socket directory: point them at its own
        r._append_as_owner(os.path.join(r.datadir, "postgresql.conf"),
                           f"\nport = {r.port}\nunix_socket_directories = '{r.sockdir}'\n")
        r.start()
        self.replica = r
        return self

    # -- state ------------------------------------------------------------------------------
    def in_recovery(self, cluster: PgCluster) -> bool:
        return cluster.psql("select pg_is_in_recovery()") == "t"

    def wait_replayed(self, timeout: float = 20.0) -> None:
        """Until the replica has replayed what the primary has written so far."""
        lsn = self.primary.psql("select pg_current_wal_insert_lsn()")   # synchronous_commit is off
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.replica.psql(f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t":
                return
            time.sleep(0.05)
        raise AssertionError(f"the replica did not replay up to {lsn} in {timeout}s")

    # -- failover ---------------------------------------------------------------------------
    def stop_primary(self) -> None:
        self.primary.stop("immediate")

    def promote(self) -> None:
        r = self.replica
        r.run([os.path.join(r.bindir, "pg_ctl"), "-D", r.datadir, "-w", "-t", "30", "promote"])

    def destroy(self) -> None:
        for c in (self.replica, self.primary):
            if c is not None:
                c.destroy()


def scratch_dir() -> str:
    """A directory the `postgres` OS user can write to (pg_basebackup through the pooler)."""
    d = tempfile.mkdtemp(prefix="odyssey-gevent-bb-")
    os.chmod(d, 0o777)
    return d


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)

