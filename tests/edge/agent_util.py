"""Helpers for the agent's tests: the tiny fixture model, configs, synthetic payloads."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge.contract import Reading, encode_readings, readings_topic
from edge.synth import CHANNEL_NAMES, Fault, simulate

TINY_MODEL = Path(__file__).resolve().parent / "fixtures" / "tiny_model"
T0 = 1_764_000_000.0


def fleet_readings(device: str, steps: int, *, seed: int, faults: Sequence[Fault] = (), t0: float = T0) -> list[Reading]:
    values, _ = simulate(steps, seed=seed, faults=faults)
    return [Reading(device, t0 + i, dict(zip(CHANNEL_NAMES, map(float, row), strict=True))) for i, row in enumerate(values)]


def payloads(readings: Sequence[Reading], batch: int = 1, prefix: str = "edgewatch") -> list[tuple[str, bytes]]:
    return [(readings_topic(readings[i].device_id, prefix), encode_readings(readings[i: i + batch]))
            for i in range(0, len(readings), batch)]


def toml_config(tmp: Path, *, agent_id: str, mqtt_port: int, kafka_bootstrap: str, prefix: str, topics: dict[str, str],
                metrics_port: int = 0, extra: str = "", model: Path = TINY_MODEL, name: str | None = None,
                outbox: Path | None = None) -> Path:
    path = tmp / f"{name or agent_id}.toml"
    outbox = outbox or tmp / f"{agent_id}-outbox.sqlite"
    path.write_text(f"""
[agent]
id = "{agent_id}"
tick_s = 0.05
max_payload_bytes = 16384
shutdown_timeout_s = 20
[mqtt]
port = {mqtt_port}
topic_prefix = "{prefix}"
reconnect_min_s = 0.2
reconnect_max_s = 2
[kafka]
bootstrap_servers = "{kafka_bootstrap}"
anomalies_topic = "{topics['anomalies']}"
telemetry_topic = "{topics['telemetry']}"
deadletter_topic = "{topics['deadletter']}"
backoff_min_s = 0.2
backoff_max_s = 2
request_timeout_ms = 5000
delivery_timeout_ms = 10000
bootstrap_timeout_ms = 2000
[model]
path = "{model}"
[outbox]
path = "{outbox}"
[metrics]
port = {metrics_port}
{extra}
""")
    return path


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def expected_fault_windows(readings: Sequence[Reading], fault: Fault, window: int, stride: int) -> list[float]:
    """Window ends (ts) of windows fully inside the fault."""
    ends = []
    for end in range(window - 1, len(readings), stride):
        if fault.start <= end - window + 1 and end < fault.start + fault.duration:
            ends.append(readings[end].ts)
    return ends


def as_array(readings: Sequence[Reading]) -> np.ndarray:
    return np.array([[r.values[c] for c in CHANNEL_NAMES] for r in readings])


class Publisher:
    """A QoS 1 paho publisher that waits for every acknowledgement (at most ``window`` unacked)."""

    def __init__(self, port: int, client_id: str, window: int = 200) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(0)
        self.window = window
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, items: Sequence[tuple[str, bytes]], timeout_s: float = 60.0) -> None:
        infos = []
        for topic, payload in items:
            infos.append(self.client.publish(topic, payload, qos=1))
            if len(infos) >= self.window:
                self._wait(infos, timeout_s)
                infos = []
        self._wait(infos, timeout_s)

    @staticmethod
    def _wait(infos: list[object], timeout_s: float) -> None:
        for info in infos:
            info.wait_for_publish(timeout_s)  # type: ignore[attr-defined]
            if not info.is_published():  # type: ignore[attr-defined]
                raise AssertionError(f"MQTT publish not acknowledged within {timeout_s} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class TopicReader:
    """Reads a Kafka topic from the beginning in its own consumer group, accumulating values."""

    def __init__(self, bootstrap: str, topic: str, group_id: str) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group_id, auto_offset_reset="earliest",
                                      enable_auto_commit=False, session_timeout_ms=10_000, heartbeat_interval_ms=1000)
        self.values: list[bytes] = []

    def poll_until(self, done: Callable[[list[bytes]], bool], timeout_s: float, what: str) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while not done(self.values):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; got {len(self.values)} messages")
            for records in self.consumer.poll(timeout_ms=500).values():
                self.values.extend(r.value for r in records)
        return self.values

    def close(self) -> None:
        self.consumer.close()
