"""``edgewatch stack up | restart | down`` on real brokers: a stack that is partly alive is completed on
its own ports, one broker restarts alone, and ``down`` stops every broker the commands started;
``up --brokers 3`` runs a three-node cluster whose quorum leader ``status`` names.

One detached stack serves the broker tests of this module (a Kafka start costs 10-20 s); the last
test ends it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloud.cli import main
from localdev.stack import StackInfo, load_info, missing_tools, pid_alive, port_open, terminate
from tests.tools import unavailable, wait_for


def stack_cmd(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["stack", *args])
    return rc, out.getvalue()


def mosquitto_pids(state: Path) -> list[int]:
    """Every process that runs a Mosquitto on ``state``'s config (its persistence folder)."""
    conf = str(state / "mosquitto.conf").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if conf in args and pid_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def wait_dead(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


@dataclass
class Detached:
    state: Path
    up_output: str
    seen: set[int] = field(default_factory=set)

    def info(self) -> StackInfo:
        info = load_info(self.state)
        assert info is not None
        self.seen |= {info.mosquitto_pid, info.kafka_pid} - {0}
        return info


@pytest.fixture(scope="module")
def detached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    if missing_tools():
        unavailable("local stack needs: " + ", ".join(missing_tools()))
    state = tmp_path_factory.mktemp("detached-stack")
    rc, out = stack_cmd("up", "--stack-dir", str(state))
    d = Detached(state, out)
    try:
        assert rc == 0, out
        d.info()
        yield d
    finally:
        with contextlib.suppress(Exception):
            stack_cmd("down", "--stack-dir", str(state))
        for pid in d.seen | set(mosquitto_pids(state)):  # whatever the code under test left behind
            if pid_alive(pid):
                terminate(pid, 0.0, None)


def test_up_says_how_to_stop_a_stack_outside_the_default_folder(detached: Detached) -> None:
    lines = detached.up_output.strip().splitlines()
    assert lines[-1] == f"stop with: edgewatch stack down --stack-dir {detached.state}", detached.up_output


def test_restart_mosquitto_keeps_its_port_and_stays_alone(detached: Detached) -> None:
    before = detached.info()
    rc, out = stack_cmd("restart", "mosquitto", "--stack-dir", str(detached.state))
    assert rc == 0, out
    after = detached.info()
    assert after.mosquitto_pid != before.mosquitto_pid and not pid_alive(before.mosquitto_pid)
    assert (after.mqtt_port, after.kafka_bootstrap, after.kafka_pid) == (before.mqtt_port, before.kafka_bootstrap, before.kafka_pid)
    assert port_open(after.mqtt_port)
    assert mosquitto_pids(detached.state) == [after.mosquitto_pid]


def test_up_after_kafka_died_starts_only_kafka_on_its_port_and_down_stops_everything(detached: Detached) -> None:
    before = detached.info()
    os.kill(before.kafka_pid, signal.SIGKILL)
    wait_dead(before.kafka_pid)
    rc, out = stack_cmd("up", "--stack-dir", str(detached.state))
    assert rc == 0, out
    after = detached.info()
    assert (after.mqtt_port, after.kafka_bootstrap) == (before.mqtt_port, before.kafka_bootstrap), out
    assert mosquitto_pids(detached.state) == [before.mosquitto_pid]  # not a second one on the same persistence folder
    assert after.mosquitto_pid == before.mosquitto_pid
    assert after.kafka_pid != before.kafka_pid and pid_alive(after.kafka_pid)
    assert out.startswith("started kafka in"), out

    rc, out = stack_cmd("down", "--stack-dir", str(detached.state))
    assert rc == 0, out
    assert [pid for pid in detached.seen if pid_alive(pid)] == []
    assert mosquitto_pids(detached.state) == []
    assert not (detached.state / "stack.json").exists()


def test_restart_without_a_stack_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "restart", "kafka", "--stack-dir", str(tmp_path)]) == 1
    assert f"no stack in {tmp_path}" in capsys.readouterr().err


def test_down_leaves_alone_a_pid_that_now_runs_another_program(tmp_path: Path) -> None:
    """A stack.json that outlived its brokers (a reboot) may name pids the system gave to others."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        info = {"state_dir": str(tmp_path), "mqtt_host": "127.0.0.1", "mqtt_port": 1, "kafka_bootstrap": "127.0.0.1:2",
                "mosquitto_pid": other.pid, "kafka_pid": other.pid}
        (tmp_path / "stack.json").write_text(json.dumps(info))
        rc, out = stack_cmd("down", "--stack-dir", str(tmp_path))
        assert rc == 0 and out.strip() == "no stack was running"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_process_whose_main_thread_exited_is_alive_until_its_last_thread_is() -> None:
    """A SIGKILLed JVM's main thread is a zombie a moment before its other threads (which hold the broker's
    port) are gone; taking it for dead made the restart find its own port in use."""
    exit_thread = {"x86_64": 60, "aarch64": 93}.get(platform.machine())
    if exit_thread is None:
        pytest.skip(f"no exit syscall number for {platform.machine()}")
    code = ("import ctypes, threading, time\n"
            "threading.Thread(target=time.sleep, args=(2,)).start()\n"
            f"ctypes.CDLL(None).syscall({exit_thread}, 0)\n")  # the main thread exits alone
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert pid_alive(child.pid)
        wait_dead(child.pid)
    finally:
        child.wait(10)


@pytest.mark.cluster
def test_up_with_three_brokers_forms_one_quorum_that_status_shows_and_down_stops(tmp_path: Path) -> None:
    if missing_tools():
        unavailable("local stack needs: " + ", ".join(missing_tools()))
    state = tmp_path / "cluster"
    pids: set[int] = set()
    try:
        rc, out = stack_cmd("up", "--brokers", "3", "--stack-dir", str(state))
        assert rc == 0, out
        info = load_info(state)
        assert info is not None and [n.node_id for n in info.kafka_nodes] == [1, 2, 3]
        pids = {info.mosquitto_pid} | {n.pid for n in info.kafka_nodes}
        assert info.kafka_bootstrap == ",".join(f"127.0.0.1:{n.port}" for n in info.kafka_nodes)
        assert f"kafka  {info.kafka_bootstrap}" in out, out
        assert stack_cmd("up", "--brokers", "1", "--stack-dir", str(state))[0] == 2  # a 3-node stack stays one

        rc, out = stack_cmd("status", "--stack-dir", str(state))
        assert rc == 0, out
        leaders = [line for line in out.splitlines() if line.endswith("quorum leader")]
        assert len(leaders) == 1 and out.count("  up  ") == 4, out
        leader = next(n for n in info.kafka_nodes if leaders[0].startswith(f"kafka-{n.node_id} "))

        os.kill(leader.pid, signal.SIGKILL)  # the others elect a new quorum leader; status names it
        wait_dead(leader.pid)
        wait_for(lambda: "quorum leader: kafka-" in stack_cmd("status", "--stack-dir", str(state))[1], 60, "a new quorum leader")
        rc, out = stack_cmd("status", "--stack-dir", str(state))
        assert rc == 1 and f"kafka-{leader.node_id}  127.0.0.1:{leader.port}  DOWN" in out, out
        assert f"quorum leader: kafka-{leader.node_id}" not in out, out

        rc, out = stack_cmd("down", "--stack-dir", str(state))
        assert rc == 0 and out.count("kafka-") == 2, out  # the two nodes alive, and Mosquitto
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert not (state / "stack.json").exists()
    finally:
        with contextlib.suppress(Exception):
            stack_cmd("down", "--stack-dir", str(state))
        for pid in pids:
            if pid_alive(pid):
                terminate(pid, 0.0, None)
