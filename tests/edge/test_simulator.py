"""The simulator publishes every reading over a real Mosquitto and records what it injected."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge import simulator
from edge.contract import decode_readings, device_from_topic, readings_subscription


def _subscribe(port: int, prefix: str, received: list[tuple[str, float]], ready: threading.Event) -> mqtt.Client:
    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        device = device_from_topic(msg.topic, prefix)
        received.extend((device, r.ts) for r in decode_readings(msg.payload, topic_device=device))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe(readings_subscription(prefix), qos=1)
    sub.loop_start()
    assert ready.wait(10)
    return sub


def test_fleet_is_seeded_and_faults_are_recorded() -> None:
    a = simulator.synthetic_fleet(3, 2000, seed=5)
    b = simulator.synthetic_fleet(3, 2000, seed=5)
    assert all((x.values == y.values).all() and x.faults == y.faults for x, y in zip(a, b, strict=True))
    assert [len(d.faults) for d in a] == [2, 2, 2]
    fault = a[0].faults[0]
    assert a[0].ts[0] <= fault.start_ts < fault.end_ts <= a[0].ts[-1]
    clean = simulator.synthetic_fleet(2, 500, seed=5, kinds=())
    assert all(not d.faults for d in clean)


def test_publishes_every_reading_batched_and_single(mqtt_port: int, unique: str) -> None:
    prefix = f"sim-{unique}"
    received: list[tuple[str, float]] = []
    sub = _subscribe(mqtt_port, prefix, received, threading.Event())
    fleet = simulator.synthetic_fleet(3, 400, seed=1, faults_per_device=1)
    pub = simulator.Publisher("127.0.0.1", mqtt_port, prefix=prefix, client_id=f"sim-{unique}", max_unacked=50)
    single = simulator.run(fleet[:2], pub, rate_hz=0, batch=1)
    batched = simulator.run(fleet[2:], pub, rate_hz=0, batch=64)
    assert pub.close() == 0
    assert (single.readings_sent, single.messages_sent, single.messages_failed) == (800, 800, 0)
    assert (batched.readings_sent, batched.messages_sent) == (400, 7)
    expected = {(d.device_id, float(t)) for d in fleet for t in d.ts}
    for _ in range(100):
        if len(received) >= len(expected):
            break
        threading.Event().wait(0.1)
    sub.loop_stop()
    assert set(received) == expected and len(received) == len(expected)


def test_cli_writes_truth(mqtt_port: int, unique: str, tmp_path: Path) -> None:
    truth = tmp_path / "truth.json"
    out = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--port", str(mqtt_port), "--devices", "2",
                          "--rate", "0", "--duration", "400", "--faults", "stuck,drift", "--faults-per-device", "1",
                          "--topic-prefix", f"cli-{unique}", "--truth", str(truth)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(truth.read_text())
    assert doc["devices"] == ["pump-000", "pump-001"]
    assert {f["kind"] for f in doc["faults"]} <= {"stuck", "drift"} and len(doc["faults"]) == 2
    assert doc["sent"]["readings_sent"] == 800 and doc["sent"]["messages_failed"] == 0


def test_cli_refuses_unknown_fault_kind(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--faults", "meteor", "--port", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "meteor" in out.stderr


def test_faults_fit_any_length_by_shrinking_then_dropping(caplog: pytest.LogCaptureFixture) -> None:
    assert simulator.plan_faults(2000, 2) == simulator.FaultPlan(2)  # the defaults where they fit: same seeded fleet
    readme = simulator.plan_faults(600, 2)  # --rate 10 --duration 60
    assert readme.count == 2 and readme.max_duration < 120 and readme.margin < 200
    assert simulator.plan_faults(100, 2).count == 1 and simulator.plan_faults(10, 2).count == 0
    for steps in (1, 50, 100, 333, 600, 639, 640, 5000):
        for count in range(6):
            plan = simulator.plan_faults(steps, count)
            assert plan.count <= count and 1 <= plan.min_duration <= plan.max_duration
            fleet = simulator.synthetic_fleet(1, steps, seed=steps, faults_per_device=count)  # never raises
            assert len(fleet[0].faults) == plan.count
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.simulator"):
        simulator.synthetic_fleet(10, 600, seed=0)
        simulator.synthetic_fleet(10, 2000, seed=0)
    assert [r.getMessage().split()[0] for r in caplog.records] == ["simulator_faults_fitted"]  # once, for the short fleet
