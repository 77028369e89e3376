"""systemd's service notification protocol (``sd_notify``), standard library only.

With ``Type=notify`` systemd waits for ``READY=1`` before it calls the service started, and with
``WatchdogSec=`` it restarts the service unless ``WATCHDOG=1`` arrives at least that often.
systemd passes the socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace)
and the watchdog period in ``WATCHDOG_USEC`` (with ``WATCHDOG_PID`` naming the process meant).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op that returns ``False``, so the agent
calls these unconditionally. Nothing happens at import; the environment is read when a
:class:`Notifier` is built.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state lines to systemd's notification socket; thread-safe (one datagram per call).

    Sending never blocks for long and never raises: a lost notification is logged once per
    failure; systemd's own timeouts (``TimeoutStartSec``, ``WatchdogSec``) are the safety net.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + raw[1:]) if raw.startswith("@") else (raw or None)
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def ping_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog`: half the watchdog period (systemd's advice), or ``None``."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; returns whether it was sent."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(1.0)
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("sd_notify_failed socket=%s fields=%s error=%s", self.address.replace("\0", "@"), ",".join(fields), exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1``: start-up finished (model loaded, threads running)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive; send at least every :attr:`watchdog_s` / 2."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """``STOPPING=1``: a graceful stop began (draining the outbox)."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=...``: one line shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")
