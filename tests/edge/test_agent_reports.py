"""The agent's periodic report (what it says about its machine) and announces addressed to one agent:
the contract without a broker, :mod:`edge.sysinfo` on this machine, and one run of two agents over
the real Mosquitto and Kafka."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import onnxruntime
import pytest

from cloud.distribute import build_announce, publish_messages
from cloud.keys import generate_keypair, load_private_key, sign_model_dir
from edge.agent import Agent
from edge.config import load_config
from edge.contract import ConfigError, ContractError, encode_manifest
from edge.contract.update import (
    AgentInfo,
    ModelStatus,
    agent_announce_topic,
    announce_topic,
    chunk_topic,
    decode_status,
    encode_announce,
    encode_status,
)
from edge.detector import load_manifest
from edge.sysinfo import MIN_OPSET, agent_info, max_opset, memory_bytes
from tests.edge.agent_util import TINY_MODEL, Publisher, TopicReader, fleet_readings, payloads, toml_config

INFO = AgentInfo(agent_version="0.1.0", onnxruntime="1.20.1", max_opset=21, arch="aarch64", mem_total_bytes=4 << 30,
                 mem_available_bytes=3 << 30, disk_free_bytes=20 << 30, devices=12, group="site-3")
REPORT = ModelStatus(agent_id="gw-1", action="report", model_name="tiny", model_version="2.0", reason="", at=1_800_000_000.5,
                     live_version="2.0", agent=INFO)


def test_a_report_round_trips_and_other_statuses_keep_their_bytes() -> None:
    assert decode_status(encode_status(REPORT)) == REPORT
    # the bytes edgewatch wrote before reports existed, unchanged (no "agent": null)
    promoted = ModelStatus("gw-1", "promoted", "tiny", "2.0", "healthy", 1_800_000_000.5, live_version="2.0")
    assert encode_status(promoted) == (b'{"action":"promoted","agent_id":"gw-1","at":1800000000.5,"live_version":"2.0",'
                                       b'"model_name":"tiny","model_version":"2.0","reason":"healthy","schema":1}')
    assert decode_status(encode_status(promoted)).agent is None


@pytest.mark.parametrize("change, field", [
    ({"agent": None}, None),  # null is an absent agent
    ({"agent": [1]}, "agent"),
    ({"agent.devices": -1}, "agent.devices"),
    ({"agent.devices": 1.5}, "agent.devices"),
    ({"agent.max_opset": 0}, "agent.max_opset"),
    ({"agent.mem_total_bytes": "4G"}, "agent.mem_total_bytes"),
    ({"agent.mem_available_bytes": (4 << 30) + 1}, "agent.mem_available_bytes"),
    ({"agent.disk_free_bytes": True}, "agent.disk_free_bytes"),
    ({"agent.onnxruntime": ""}, "agent.onnxruntime"),
    ({"agent.agent_version": "x" * 65}, "agent.agent_version"),
    ({"agent.arch": 64}, "agent.arch"),
    ({"agent.group": "a/b"}, "agent.group"),
    ({"agent.cpus": 4}, "agent.cpus"),
    ({"agent.group": ...}, "agent.group"),  # ...: deleted
    ({"action": "reported"}, "action"),
])
def test_a_bad_report_field_is_named(change: dict[str, object], field: str | None) -> None:
    doc = json.loads(encode_status(REPORT))
    for key, value in change.items():
        target, _, name = key.rpartition(".")
        where = doc[target] if target else doc
        if value is ...:
            del where[name]
        else:
            where[name] = value
    if field is None:
        assert decode_status(json.dumps(doc)).agent is None
        return
    with pytest.raises(ContractError) as err:
        decode_status(json.dumps(doc))
    assert err.value.field == field


def test_agent_announce_topic_names_the_group_and_the_agent() -> None:
    assert agent_announce_topic("site-3", "gw-1", "fleet") == "fleet/models/site-3/agents/gw-1/announce"
    for group, agent in (("site/3", "gw-1"), ("site-3", "gw+1"), ("site-3", "")):
        with pytest.raises(ContractError):
            agent_announce_topic(group, agent)


def test_sysinfo_describes_this_machine(tmp_path: Path) -> None:
    info = agent_info(tmp_path / "not" / "yet", 3, "site-3")  # a state_dir not created yet: its nearest parent's disk
    assert info.onnxruntime == onnxruntime.__version__ and info.arch == platform.machine() and info.agent_version
    assert info.max_opset >= load_manifest(TINY_MODEL).opset
    assert 0 < info.mem_available_bytes <= info.mem_total_bytes and info.disk_free_bytes > 0
    assert (info.devices, info.group) == (3, "site-3")
    assert decode_status(encode_status(dataclasses.replace(REPORT, agent=info))).agent == info
    total, available = memory_bytes(tmp_path / "no-meminfo")  # the os.sysconf fallback
    assert 0 < available <= total
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        3884412 kB\nMemFree:          201820 kB\nMemAvailable:    2103988 kB\n")
    assert memory_bytes(meminfo) == (3884412 * 1024, 2103988 * 1024)


@pytest.mark.parametrize("version, opset", [("1.17.3", 20), ("1.18.0", 21), ("1.20.1", 21), ("1.32.0", 21), ("1.13.1", MIN_OPSET),
                                            ("2.1.0", 21), ("1.21.0.dev20250101", 21), ("dev", MIN_OPSET)])
def test_max_opset_follows_onnxruntime_s_table(version: str, opset: int) -> None:
    assert max_opset(version) == opset


def test_report_interval_must_not_be_negative(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[updates]\nreport_interval_s = -1\n")
    with pytest.raises(ConfigError, match="'updates.report_interval_s' = -1.0 must be >= 0"):
        load_config(path, env={})
    assert load_config(None, env={}).updates.report_interval_s == 60.0


def _signed_copy(dest: Path, version: str, key: Path) -> Path:
    """The tiny model under ``version``, signed by ``key`` (same model.onnx: same sha256)."""
    dest.mkdir(parents=True)
    shutil.copy(TINY_MODEL / "model.onnx", dest / "model.onnx")
    manifest = dataclasses.replace(load_manifest(TINY_MODEL), version=version, signature=None)
    (dest / "manifest.json").write_bytes(encode_manifest(manifest))
    sign_model_dir(dest, load_private_key(key))
    return dest


def _announce_to(agent_id: str, model: Path, *, port: int, group: str, prefix: str) -> None:
    announce, chunks = build_announce(model)
    m = announce.manifest
    messages = [(chunk_topic(m.name, m.version, i, prefix), c) for i, c in enumerate(chunks)]
    messages.append((agent_announce_topic(group, agent_id, prefix), encode_announce(announce)))
    publish_messages(messages, host="127.0.0.1", port=port, client_id=f"announce-{agent_id}-{m.version}", retain=True)


class Readings(threading.Thread):
    """Publishes fault-free readings of two devices until stopped."""

    def __init__(self, port: int, prefix: str, unique: str) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher(port, f"readings-{unique}")
        self.prefix = prefix
        self.stop = threading.Event()
        self.readings = [fleet_readings(f"pump-{d}", 4000, seed=d) for d in range(2)]

    def run(self) -> None:
        for step in range(0, 4000, 10):
            if self.stop.wait(0.02):
                break
            self.pub.publish([p for r in self.readings for p in payloads(r[step: step + 10], batch=10, prefix=self.prefix)])
        self.pub.close()


@pytest.fixture
def two_agents(tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, unique: str) -> Iterator[dict[str, object]]:
    """Agents a- and b-<unique> in one update group, reporting every second on one status topic."""
    key, _ = generate_keypair(tmp_path / "keys")
    topics = {k: f"{k}.{unique}" for k in ("anomalies", "telemetry", "deadletter", "status")}
    prefix, group = f"rep{unique}", f"g{unique}"
    agents = []
    for name in ("a", "b"):
        extra = f"""[updates]
enabled = true
group = "{group}"
trusted_keys_dir = "{tmp_path / 'keys'}"
state_dir = "{tmp_path / name / 'models'}"
shadow_min_windows = 20
shadow_min_seconds = 0.5
report_interval_s = 1.0
"""
        path = toml_config(tmp_path, agent_id=f"{name}-{unique}", mqtt_port=mqtt_port, kafka_bootstrap=kafka_bootstrap,
                           prefix=prefix, topics=topics, extra=extra)
        config = load_config(path, env={})
        agents.append(Agent(dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, status_topic=topics["status"]))))
    for agent in agents:
        agent.start()
    readings = Readings(mqtt_port, prefix, unique)
    readings.start()
    status = TopicReader(kafka_bootstrap, topics["status"], f"st-{unique}")
    yield {"a": agents[0], "b": agents[1], "key": key, "status": status, "prefix": prefix, "group": group, "tmp": tmp_path}
    readings.stop.set()
    readings.join(30)
    for agent in agents:
        agent.stop()
    status.close()


@pytest.mark.brokers
def test_reports_and_an_announce_to_one_agent_then_its_abort(two_agents: dict[str, object], mqtt_port: int) -> None:
    """Both agents report their live version and machine; a version announced to agent a alone is
    tried and promoted there while b never downloads it; the previous version announced to a again
    (a rollout's abort) swaps straight back; an empty message on a's topic (a deletion) changes nothing."""
    a, b, key, reader, prefix, group, tmp = (two_agents[k] for k in ("a", "b", "key", "status", "prefix", "group", "tmp"))
    assert isinstance(a, Agent) and isinstance(b, Agent) and isinstance(reader, TopicReader) and isinstance(key, Path)
    assert isinstance(prefix, str) and isinstance(group, str) and isinstance(tmp, Path)
    ids = (a.config.agent.id, b.config.agent.id)
    live = load_manifest(TINY_MODEL).version

    def statuses(agent: Agent) -> list[ModelStatus]:
        return [s for s in map(decode_status, reader.values) if s.agent_id == agent.config.agent.id]

    def wait_status(agent: Agent, action: str, version: str, what: str) -> ModelStatus:
        reader.poll_until(lambda _: any(s.action == action and s.model_version == version for s in statuses(agent)), 30, what)
        return next(s for s in statuses(agent) if s.action == action and s.model_version == version)

    reader.poll_until(lambda v: {s.agent_id for s in map(decode_status, v) if s.action == "report"} == set(ids), 30, "reports")
    publish_messages([(agent_announce_topic(group, ids[0], prefix), b"")], host="127.0.0.1", port=mqtt_port,
                     client_id=f"delete-{ids[0]}", retain=True)
    _announce_to(ids[0], _signed_copy(tmp / "v2", "2.0", key), port=mqtt_port, group=group, prefix=prefix)
    wait_status(a, "shadow_started", "2.0", "a trying 2.0")
    wait_status(a, "promoted", "2.0", "a promoting 2.0")
    served = wait_status(a, "report", "2.0", "a report of 2.0")
    assert served.live_version == "2.0" and served.agent is not None and served.agent.group == group

    _announce_to(ids[0], _signed_copy(tmp / "v1", live, key), port=mqtt_port, group=group, prefix=prefix)  # the abort
    back = wait_status(a, "rolled_back", live, "a back on the previous version")
    assert back.live_version == live and a.pipeline is not None and a.pipeline.manifest.version == live

    reports = [s for s in statuses(b) if s.action == "report"]
    assert reports and all(s.live_version == live and s.model_version == live for s in reports)
    info = reports[-1].agent
    assert info is not None and info.group == group and info.onnxruntime == onnxruntime.__version__ and info.mem_total_bytes > 0
    assert max(s.agent.devices for s in statuses(a) + reports if s.agent is not None) == 2
    seen = [s.agent.last_seen for s in statuses(a) + reports if s.agent is not None and s.agent.last_seen]
    assert seen and max(map(len, seen)) == 2 and all(t <= time.time() for x in seen for t in x.values())  # each device's last payload
    assert [s.action for s in statuses(b) if s.action != "report"] == []  # b was not addressed: it never downloaded
    assert b.downloader is not None and b.downloader.chunks_written == 0 and not (tmp / "b" / "models" / "models").exists()
    assert [s for s in statuses(a) if s.action == "refused"] == []  # the empty message was not an announce

    # an abort that comes while the candidate is still on trial withdraws it: it never goes live
    assert b.updates is not None
    b.updates.policy = dataclasses.replace(b.updates.policy, min_windows=10**9)  # a trial that would run for ever
    _announce_to(ids[1], _signed_copy(tmp / "v3", "3.0", key), port=mqtt_port, group=group, prefix=prefix)
    wait_status(b, "shadow_started", "3.0", "b trying 3.0")
    _announce_to(ids[1], tmp / "v1", port=mqtt_port, group=group, prefix=prefix)  # the abort: b's live version again
    withdrawn = wait_status(b, "rejected", "3.0", "b withdrawing 3.0")
    assert "withdrawn: the live version" in withdrawn.reason and withdrawn.live_version == live
    assert b.updates.candidate is None and b.pipeline is not None and b.pipeline.manifest.version == live
    assert [s.action for s in statuses(b) if s.action != "report"] == ["downloaded", "shadow_started", "rejected"]


@pytest.mark.brokers
def test_a_rollback_published_to_the_group_swaps_the_previous_version_back(two_agents: dict[str, object], mqtt_port: int) -> None:
    """`registry rollback` then `publish`: a version promoted from the group's announce, then the
    previous one announced to the group again, is swapped back on every agent without a trial."""
    a, b, key, reader, prefix, group, tmp = (two_agents[k] for k in ("a", "b", "key", "status", "prefix", "group", "tmp"))
    assert isinstance(a, Agent) and isinstance(b, Agent) and isinstance(reader, TopicReader) and isinstance(key, Path)
    assert isinstance(prefix, str) and isinstance(group, str) and isinstance(tmp, Path)
    live = load_manifest(TINY_MODEL).version

    def to_group(model: Path) -> None:
        announce, chunks = build_announce(model)
        m = announce.manifest
        messages = [(chunk_topic(m.name, m.version, i, prefix), c) for i, c in enumerate(chunks)]
        publish_messages([*messages, (announce_topic(group, prefix), encode_announce(announce))], host="127.0.0.1",
                         port=mqtt_port, client_id=f"group-{m.version}", retain=True)

    def done(action: str, version: str) -> Callable[[list[bytes]], bool]:
        ids = {a.config.agent.id, b.config.agent.id}
        return lambda v: {s.agent_id for s in map(decode_status, v) if (s.action, s.model_version) == (action, version)} == ids

    to_group(_signed_copy(tmp / "v2", "2.0", key))
    reader.poll_until(done("promoted", "2.0"), 30, "both agents promoting 2.0")
    to_group(_signed_copy(tmp / "v1", live, key))
    reader.poll_until(done("rolled_back", live), 30, "both agents back on the previous version")
    assert all(x.pipeline is not None and x.pipeline.manifest.version == live for x in (a, b))
