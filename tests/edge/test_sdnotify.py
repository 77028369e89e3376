"""edge.sdnotify against a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_stopping_arrive_as_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("model pump-default 1.0.0")
    assert receive(sock) == ["READY=1", "STATUS=model pump-default 1.0.0"]
    assert n.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert n.stopping()
    assert receive(sock) == ["STOPPING=1"]
    assert n.status("outbox 12 rows")
    assert receive(sock) == ["STATUS=outbox 12 rows"]


def test_abstract_namespace_socket() -> None:
    name = f"edgewatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == ["READY=1"]


def test_without_systemd_every_call_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_s is None and n.ping_interval_s is None
    assert not n.ready() and not n.watchdog() and not n.stopping()


def test_missing_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="edge.sdnotify"):
        assert n.ready() is False
    assert "sd_notify_failed" in caplog.text


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_period_from_environment(env: dict[str, str], expected: float | None) -> None:
    n = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert n.watchdog_s == expected
    assert n.ping_interval_s == (None if expected is None else expected / 2)
