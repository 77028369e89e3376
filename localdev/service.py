"""A broker as a child process: started in its own session on a loopback port, readiness detected
(never slept for), stopped with SIGTERM then SIGKILL, or killed at once; and the process helpers
behind it. Used by :mod:`localdev.stack` (Mosquitto, Kafka) and :mod:`localdev.pgserver`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from edge.contract.errors import BrokerUnavailable

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has not
    handed out before: the kernel may give the same free port to two calls in a row, and a Kafka
    node whose two listeners got one port refuses to start."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise BrokerUnavailable("no free loopback port that was not handed out already (100 tries)")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Service:
    """A broker run as a child process in its own session, with its log in ``state_dir``."""

    name = "service"

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def config_path(self) -> Path:
        """The config file the process is started with; it names this service of this state folder."""
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def adopt(self, pid: int) -> bool:
        """Take ``pid``, started earlier by another process, as this service's process, so that
        :meth:`stop` stops it. Refused (False) when ``pid`` is gone or now runs something else
        than this service's config file (the system gave the pid away)."""
        if not pid or not pid_alive(pid):
            return False
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            args = [str(self.config_path).encode()]  # no /proc: trust the pid
        if str(self.config_path).encode() not in args:
            return False
        self.proc = None
        self.pid = pid
        return True

    def prepare(self) -> None:
        """Write config files; called before every start."""

    def is_ready(self) -> bool:
        return port_open(self.port)

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the process and block until it is ready; raises :class:`BrokerUnavailable`."""
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start the process without waiting for it (:meth:`wait_ready` does)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        if port_open(self.port):
            raise BrokerUnavailable(f"{self.name}: port 127.0.0.1:{self.port} is already in use")
        logfile = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.state_dir)
        logfile.close()
        self.pid = self.proc.pid

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the launched process is ready; raises :class:`BrokerUnavailable` on timeout or exit."""
        wait_until(self.is_ready, timeout_s, f"{self.name} on 127.0.0.1:{self.port}", self.proc, self.log_path)
        log.info("service_started name=%s port=%d pid=%d", self.name, self.port, self.pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns when the process is gone."""
        if self.pid is None:
            return
        terminate(self.pid, timeout_s, self.proc)
        self.proc = None
        self.pid = None

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash, for tests)."""
        if self.pid is not None:
            terminate(self.pid, 0.0, self.proc)
            self.proc = None
            self.pid = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); look at its state. A JVM's main thread is a zombie while
    # its other threads still exit and hold the process's sockets: alive until the last one is gone.
    try:
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            return True
        return any(int(t.name) != pid for t in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False


def terminate(pid: int, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Stop the process group ``pid`` leads: SIGTERM, then SIGKILL after ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if timeout_s == 0.0 and sig == signal.SIGTERM:
            continue
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        if proc is not None:
            try:
                proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if not pid_alive(pid):
            return
    if proc is not None:
        proc.wait(10.0)


def wait_until(ready: Callable[[], bool], timeout_s: float, what: str,
               proc: subprocess.Popen[bytes] | None = None, log_path: Path | None = None) -> None:
    """Poll ``ready`` until true; raise :class:`BrokerUnavailable` with the log tail on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
    status = f"exited with {proc.returncode}" if proc is not None and proc.returncode is not None else f"not ready after {timeout_s:.0f} s"
    raise BrokerUnavailable(f"{what} {status}; log tail:\n{tail}")
