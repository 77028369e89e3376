"""Helpers for the agent's tests: the tiny fixture model, configs, synthetic payloads."""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from edge.config import Config, load_config
from edge.contract import Reading, decode_event, encode_readings, readings_topic
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.pipeline import Pipeline
from edge.synth import CHANNEL_NAMES, Fault, simulate
from localdev.stack import LocalStack, free_port
from tests.kafka_util import create_topic

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
                outbox: Path | None = None, adaptive: bool = False) -> Path:
    """An agent config on the test's brokers. The adaptive layer is off unless asked for: these
    agents see short streams (inside a new device's warm-up), and the delivery tests compute the
    events they expect with the manifest's fixed threshold; the layer has tests of its own."""
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
bootstrap = "{kafka_bootstrap}"
anomalies_topic = "{topics['anomalies']}"
telemetry_topic = "{topics['telemetry']}"
deadletter_topic = "{topics['deadletter']}"
backoff_min_s = 0.2
backoff_max_s = 2
request_timeout_ms = 5000
delivery_timeout_ms = 10000
bootstrap_timeout_ms = 2000
[adaptive]
enabled = {str(adaptive).lower()}
[model]
path = "{model}"
[outbox]
path = "{outbox}"
[metrics]
port = {metrics_port}
{extra}
""")
    return path


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


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

        from cloud.kafka_groups import subscribe

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, auto_offset_reset="earliest",
                                      enable_auto_commit=False, session_timeout_ms=10_000, heartbeat_interval_ms=1000)
        subscribe(self.consumer, [topic])
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


def expected_event_ids(config: Config, stream: Sequence[tuple[str, bytes]]) -> set[str]:
    """The events the same config and model produce from the same payloads, without brokers."""
    pipe = Pipeline(config, OnnxDetector.load(TINY_MODEL), AgentMetrics(CollectorRegistry()))
    records = pipe.process([Message(t, p, 0.0) for t, p in stream])
    return {decode_event(r.value).event_id for r in records if r.kind == "anomaly"}


def fleet(prefix: str, devices: int, steps: int, *, seed: int, t0_offset: float = 0.0,
          fault_every: int = 2) -> list[tuple[str, bytes]]:
    """Interleaved batched payloads of several devices, a spike fault on every ``fault_every``-th."""
    per_device: list[list[tuple[str, bytes]]] = []
    for d in range(devices):
        faults = [Fault("spike", "pressure", start=steps // 2, duration=40, magnitude=4.0)] if d % fault_every == 0 else []
        readings: list[Reading] = fleet_readings(f"dev-{d}", steps, seed=seed + d, faults=faults, t0=1.764e9 + t0_offset)
        per_device.append(payloads(readings, batch=10, prefix=prefix))
    return [p for group in zip(*per_device, strict=True) for p in group]


def good_payload(i: int) -> dict[str, object]:
    return {"schema": 1, "ts": 1.7e9 + i, "values": {c: 1.0 + i for c in CHANNEL_NAMES}}


def fuzz_cases(n: int, seed: int = 0) -> list[tuple[str, bytes, str | None]]:
    """(topic, payload, expected reason or None when any reason will do) for ``n`` bad payloads."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes, str | None]] = []
    topic = "edgewatch/fz-1/readings"
    for i in range(n):
        p = good_payload(i)
        kind = i % 9
        if kind == 0:
            out.append((topic, json.dumps(p).encode()[: rng.randint(0, 40)], "not_json"))
        elif kind == 1:
            p["values"][rng.choice(CHANNEL_NAMES)] = "__X__"  # type: ignore[index]
            text = json.dumps(p).replace('"__X__"', rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]))
            out.append((topic, text.encode(), "non_finite"))
        elif kind == 2:
            p["values"][rng.choice(CHANNEL_NAMES)] = rng.choice(["1.0", None, [1], {"x": 1}, True])  # type: ignore[index]
            out.append((topic, json.dumps(p).encode(), "wrong_type"))
        elif kind == 3:
            p["values"]["bogus_" + str(i)] = 0.5  # type: ignore[index]
            out.append((topic, json.dumps(p).encode(), "unknown_channel"))
        elif kind == 4:
            del p["values"][rng.choice(CHANNEL_NAMES)]  # type: ignore[attr-defined]
            out.append((topic, json.dumps(p).encode(), "missing_channel"))
        elif kind == 5:
            out.append((topic, json.dumps(p).encode() + b" " * 17000, "too_large"))
        elif kind == 6:
            p[rng.choice(["schema", "extra"])] = 2
            out.append((topic, json.dumps(p).encode(), "invalid"))
        elif kind == 7:
            out.append(("edgewatch/bad$device/readings", json.dumps(p).encode(), "bad_topic"))
        else:
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
            out.append((topic, b"\xff" + junk, None))
    return out


@dataclass
class Setup:
    """An agent's config on the local stack with its own topics (created) and MQTT prefix."""

    config: Config
    prefix: str
    topics: dict[str, str]
    bootstrap: str
    unique: str


def agent_setup(stack: LocalStack, tmp_path: Path, unique: str, env: Mapping[str, str] | None = None) -> Setup:
    """:func:`toml_config` for an agent on ``stack``, its topics created, loaded with ``env``."""
    topics = {k: f"test.{unique}.{k}" for k in ("anomalies", "telemetry", "deadletter")}
    for t in topics.values():
        create_topic(stack.kafka_bootstrap, t)
    prefix = f"t{unique}"
    path = toml_config(tmp_path, agent_id=f"agent-{unique}", mqtt_port=stack.mqtt_port,
                       kafka_bootstrap=stack.kafka_bootstrap, prefix=prefix, topics=topics, metrics_port=free_port())
    return Setup(load_config(path, env=dict(env or {})), prefix, topics, stack.kafka_bootstrap, unique)
