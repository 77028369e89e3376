"""``--new-normal`` on the real brokers: a signed command over Mosquitto rebaselines exactly the
named device of a running agent and a status on Kafka confirms it; unsigned, forged, stale,
misaddressed and replayed commands are refused with a status and change nothing; and
``edgewatch incidents label ID --new-normal`` does it end to end from a processor store."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cloud.cli import main
from cloud.commands import new_normal_command, publish_command, sign_command
from cloud.keys import generate_keypair, load_private_key
from cloud.processor.backends import open_store
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.pipeline import IncidentPipeline
from edge.agent import Agent
from edge.config import load_config
from edge.contract import encode_event
from edge.contract.command import command_topic, encode_command
from edge.contract.update import ModelStatus, decode_status
from tests.cloud.processor_streams import T0, burst, config, event, write_config
from tests.cloud.test_processor_store import Rec
from tests.edge.agent_util import Publisher, TopicReader, fleet_readings, payloads, toml_config
from tests.tools import wait_for

DEVICES = ("pump-0", "pump-1", "pump-2")
STEPS = 200  # per round and device: 43 windows of 32 readings at stride 4, over the warm-up of 10


class Rig:
    def __init__(self, tmp: Path, mqtt_port: int, kafka_bootstrap: str, unique: str) -> None:
        self.key_path, _ = generate_keypair(tmp / "keys")
        self.key = load_private_key(self.key_path)
        self.topics = {k: f"{k}.{unique}" for k in ("anomalies", "telemetry", "deadletter", "status")}
        self.prefix = f"nn{unique}"
        self.port = mqtt_port
        extra = f"""[updates]
enabled = true
group = "g{unique}"
trusted_keys_dir = "{tmp / 'keys'}"
state_dir = "{tmp / 'models'}"
report_interval_s = 0  # no report statuses: the tests count the status events
"""
        path = toml_config(tmp, agent_id=f"a{unique}", mqtt_port=mqtt_port, kafka_bootstrap=kafka_bootstrap, prefix=self.prefix,
                           topics=self.topics, extra=extra, adaptive=True)
        cfg = load_config(path, env={"EDGEWATCH_ADAPTIVE__WARMUP_WINDOWS": "10"})
        cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, status_topic=self.topics["status"]))
        self.agent = Agent(cfg, registry=CollectorRegistry())
        self.agent_id = cfg.agent.id
        self.agent.start()
        assert self.agent.commands is not None
        wait_for(self.agent.commands.subscribed.is_set, 20, "the command subscription")
        self.pub = Publisher(mqtt_port, f"nn-pub-{unique}")
        self.readings = {d: fleet_readings(d, 6 * STEPS, seed=i) for i, d in enumerate(DEVICES)}
        self.round = 0
        self.status = TopicReader(kafka_bootstrap, self.topics["status"], f"nn-st-{unique}")

    def drive(self) -> None:
        """One more round of readings of every device (43 or more windows each, past a warm-up of
        10), returning once each device has decided them."""
        assert self.agent.pipeline is not None and self.agent.pipeline.adaptive is not None
        layer = self.agent.pipeline.adaptive
        before = {d: layer.devices[d].windows if d in layer.devices else 0 for d in DEVICES}
        lo, hi = self.round * STEPS, (self.round + 1) * STEPS
        self.round += 1
        for d in DEVICES:
            self.pub.publish(payloads(self.readings[d][lo:hi], batch=20, prefix=self.prefix))
        wait_for(lambda: all(d in layer.devices and layer.devices[d].windows >= before[d] + 43 for d in DEVICES), 60,
                 "every device's windows decided")

    def warming(self) -> dict[str, bool]:
        assert self.agent.pipeline is not None and self.agent.pipeline.adaptive is not None
        return {d: self.agent.pipeline.adaptive.warming(d) for d in DEVICES}

    def command(self, *, device: str = "pump-1", agent: str | None = None, age_s: float = 0.0) -> bytes:
        c = new_normal_command(agent_id=agent or self.agent_id, device_id=device, incident_id="inc-1",
                               issued_at=time.time() - age_s)
        return encode_command(sign_command(c, self.key))

    def send_raw(self, payload: bytes) -> None:
        self.pub.publish([(command_topic(self.agent_id, self.prefix), payload)])

    def statuses(self, n: int) -> list[ModelStatus]:
        values = self.status.poll_until(lambda v: len(v) >= n, 60, f"{n} status events")
        return [decode_status(v) for v in values]

    def close(self) -> None:
        self.pub.close()
        self.agent.stop()
        self.status.close()


@pytest.fixture
def rig(tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, unique: str) -> Iterator[Rig]:
    r = Rig(tmp_path, mqtt_port, kafka_bootstrap, unique)
    yield r
    r.close()


def test_a_signed_command_rebaselines_exactly_its_device_and_a_replay_is_refused(rig: Rig) -> None:
    rig.drive()
    assert rig.warming() == dict.fromkeys(DEVICES, False)
    good = rig.command(device="pump-1")
    topic = publish_command(sign_command(new_normal_command(agent_id=rig.agent_id, device_id="pump-2", incident_id="inc-2",
                                                            issued_at=time.time()), rig.key), host="127.0.0.1",
                            port=rig.port, prefix=rig.prefix)
    assert topic == f"{rig.prefix}/commands/{rig.agent_id}"
    rig.send_raw(good)
    first = rig.statuses(2)
    assert [(s.action, s.device_id) for s in first] == [("rebaselined", "pump-2"), ("rebaselined", "pump-1")]
    assert first[1].command_id == json.loads(good)["command_id"] and first[1].agent_id == rig.agent_id
    assert rig.warming() == {"pump-0": False, "pump-1": True, "pump-2": True}

    rig.drive()  # both warm up again on their own windows
    assert rig.warming() == dict.fromkeys(DEVICES, False)
    rig.send_raw(good)
    replay = rig.statuses(3)[-1]
    assert (replay.action, replay.device_id) == ("command_refused", "pump-1") and replay.reason.startswith("replayed:")
    assert rig.warming() == dict.fromkeys(DEVICES, False)
    assert rig.agent.registry.get_sample_value("edgewatch_agent_model_updates_total", {"action": "rebaselined"}) == 2


def test_unsigned_forged_stale_and_misaddressed_commands_change_nothing(rig: Rig, tmp_path: Path) -> None:
    rig.drive()
    assert rig.warming() == dict.fromkeys(DEVICES, False)
    doc = json.loads(rig.command())
    del doc["signature"]
    unsigned = json.dumps(doc).encode()
    tampered = json.loads(rig.command(device="pump-0"))
    tampered["device_id"] = "pump-1"
    stranger = load_private_key(generate_keypair(tmp_path / "stranger")[0])
    forged = encode_command(sign_command(new_normal_command(agent_id=rig.agent_id, device_id="pump-1", incident_id="inc-1",
                                                            issued_at=time.time()), stranger))
    bad = [(unsigned, "unsigned"), (json.dumps(tampered).encode(), "bad_signature"), (forged, "unknown_key"),
           (rig.command(age_s=3600), "stale"), (rig.command(age_s=-3600), "future"),
           (rig.command(agent="someone-else"), "wrong_agent"), (b"{}", "malformed")]
    for payload, _ in bad:
        rig.send_raw(payload)
    got = rig.statuses(len(bad))
    assert [s.action for s in got] == ["command_refused"] * len(bad)
    assert [s.reason.split(":")[0] for s in got] == [reason for _, reason in bad]
    rig.drive()  # windows decided after the refusals: nothing was restarted
    assert rig.warming() == dict.fromkeys(DEVICES, False)
    assert rig.agent.commands is not None and rig.agent.commands.applied == 0
    assert sum(rig.agent.commands.refused.values()) == len(bad)
    assert rig.agent.registry.get_sample_value("edgewatch_agent_model_updates_total", {"action": "command_refused"}) == len(bad)


def test_incidents_label_new_normal_end_to_end(rig: Rig, tmp_path: Path, kafka_bootstrap: str, unique: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A processor store holds an incident of pump-1 reported by the rig's agent: the CLI finds the
    agent from the incident's events, signs and sends the command, labels the incident, and waits
    for the agent's status on Kafka."""
    rig.drive()
    db = tmp_path / "store.db"
    cfg_path = write_config(tmp_path / "cloud.toml", bootstrap=kafka_bootstrap, topic=f"anom.{unique}", group=f"g{unique}",
                            sqlite_path=db)
    cfg = config(tmp_path / "cloud.toml", bootstrap=kafka_bootstrap, topic=f"anom.{unique}", group=f"g{unique}", sqlite_path=db)
    events = [dataclasses.replace(e, agent_id=rig.agent_id) for e in burst("pump-1", T0, count=5)]
    events.append(event("bg-000", T0 + 600))  # moves event time on, so the incident opens
    store = open_store(cfg.store)
    IncidentPipeline(cfg, store, ProcessorMetrics(CollectorRegistry()), clock=lambda: T0 + 3600).process(
        f"anom.{unique}", 0, [Rec(i, encode_event(e)) for i, e in enumerate(events)])
    incident = next(r for r in store.incidents() if r.device_id == "pump-1")
    store.close()
    base = ["incidents", "label", incident.incident_id, "--new-normal", "--config", str(cfg_path)]

    assert main(base) == 2
    assert "pass --key" in capsys.readouterr().err

    assert main([*base, "--key", str(rig.key_path), "--mqtt-port", str(rig.port), "--mqtt-prefix", rig.prefix,
                 "--status-topic", rig.topics["status"], "--wait-s", "60"]) == 0
    out = capsys.readouterr().out
    assert f"to agent {rig.agent_id}" in out and "labelled new_normal" in out and "rebaselined pump-1" in out
    assert rig.warming() == {"pump-0": False, "pump-1": True, "pump-2": False}
    store = open_store(cfg.store)
    assert store.incident(incident.incident_id).label == "new_normal"  # type: ignore[union-attr]
    store.close()
