"""A throwaway PostgreSQL server from Debian's package, for tests and benchmarks.

``initdb`` into a fresh folder, ``postgres`` on a free loopback port with its unix socket in
that folder, readiness detected with ``pg_isready``, stopped (fast shutdown) and removed by
:meth:`LocalPostgres.stop`. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user the package creates. Durability is switched off (``fsync=off``): this
server holds test data only.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from edge.contract import BrokerUnavailable
from localdev.stack import free_port, wait_until

log = logging.getLogger(__name__)

SERVICE_USER = "postgres"


def pg_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``postgres`` (Debian keeps them off PATH), or None."""
    env = os.environ.get("EDGEWATCH_PG_BIN")
    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if c and Path(c, "postgres").exists() and Path(c, "initdb").exists():
            return Path(c)
    return None


def _version_key(path: str) -> int:
    part = Path(path).parent.name
    return int(part) if part.isdigit() else 0


def missing() -> str | None:
    """Why a local PostgreSQL cannot be started here, or None when it can."""
    if pg_bin_dir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return f"running as root and no {SERVICE_USER!r} user to run PostgreSQL as (apt-get install postgresql creates it)"
    return None


class LocalPostgres:
    """One PostgreSQL server in a temporary folder; :attr:`dsn` connects as superuser ``edgewatch``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edgewatch-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = SERVICE_USER if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=edgewatch dbname={dbname}"

    def start(self, timeout_s: float = 60.0) -> LocalPostgres:
        """initdb and start; returns once the server accepts connections, raises :class:`BrokerUnavailable`."""
        bindir = pg_bin_dir()
        reason = missing()
        if bindir is None or reason:
            raise BrokerUnavailable(reason or "postgres not found")
        data, sock, logfile = self.dir / "data", self.dir / "sock", self.dir / "postgres.log"
        sock.mkdir()
        if self._user:
            ids = pwd.getpwnam(self._user)
            for p in (self.dir, sock):
                os.chown(p, ids.pw_uid, ids.pw_gid)
        result = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "edgewatch", "-A", "trust", "-E", "UTF8",
                                 "--no-sync", "--no-instructions"], capture_output=True, text=True, user=self._user)
        if result.returncode != 0:
            raise BrokerUnavailable(f"initdb failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        out = logfile.open("ab")
        self.proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sock),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=50"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, user=self._user, start_new_session=True)
        out.close()
        isready = bindir / "pg_isready"
        probe = [str(isready) if isready.exists() else "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]

        def ready() -> bool:
            return subprocess.run(probe, capture_output=True).returncode == 0

        try:
            wait_until(ready, timeout_s, f"postgres on 127.0.0.1:{self.port}", self.proc, logfile)
        except BrokerUnavailable:
            self.stop()
            raise
        log.info("postgres_started port=%d dir=%s", self.port, self.dir)
        return self

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after 30 s; removes the folder."""
        if self.proc is not None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
