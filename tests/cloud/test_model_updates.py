"""Signed model updates into a running agent over real Mosquitto and Kafka: refused when
tampered, unknown or incompatible; tried in shadow; promoted when healthy, rejected when not;
the live model scores every window throughout."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from cloud.distribute import build_announce, publish_model
from cloud.keys import generate_keypair, load_private_key, sign_model_dir
from edge.agent import Agent
from edge.config import load_config
from edge.contract import ExpectedAlerts, encode_manifest
from edge.contract.update import MAX_CHUNK_BYTES, ModelAnnounce, announce_topic, chunk_topic, decode_status, encode_announce
from edge.detector import load_manifest
from tests.edge.agent_util import T0, TINY_MODEL, Publisher, TopicReader, fleet_readings, payloads, toml_config
from tests.tools import wait_for

DEVICES = 4


def _copy_model(src: Path, dest: Path, version: str, key: Path, **changes: object) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(src / "model.onnx", dest / "model.onnx")
    manifest = dataclasses.replace(load_manifest(src), version=version, signature=None, **changes)  # type: ignore[arg-type]
    (dest / "manifest.json").write_bytes(encode_manifest(manifest))
    sign_model_dir(dest, load_private_key(key))
    return dest


def _constant_model(dest: Path, version: str, key: Path, value: float) -> Path:
    """Same interface as the tiny model, but every window scores ``value`` (NaN: a broken model)."""
    live = load_manifest(TINY_MODEL)
    c = len(live.channels)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["windows", "axes12"], ["m"], keepdims=0),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["z", "value"], ["score"]),
         helper.make_node("ReduceMean", ["windows", "axes1"], ["cm"], keepdims=0),
         helper.make_node("Mul", ["cm", "zero"], ["cz"]),
         helper.make_node("Add", ["cz", "share"], ["channel_scores"])],
        "constant",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", live.window_length, c])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("channel_scores", TensorProto.FLOAT, ["batch", c])],
        [helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]), helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("value", TensorProto.FLOAT, [], [value]),
         helper.make_tensor("share", TensorProto.FLOAT, [], [1.0 / c])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    dest.mkdir(parents=True)
    data = model.SerializeToString()
    (dest / "model.onnx").write_bytes(data)
    manifest = dataclasses.replace(live, version=version, sha256=hashlib.sha256(data).hexdigest(), threshold=0.5, signature=None)
    (dest / "manifest.json").write_bytes(encode_manifest(manifest))
    sign_model_dir(dest, load_private_key(key))
    return dest


def _junk_model(dest: Path, version: str, key: Path, size: int) -> Path:
    """A signed artifact of ``size`` bytes that is not a model (refused before download, or it would fail to load)."""
    dest.mkdir(parents=True)
    data = bytes(range(256)) * (size // 256)
    (dest / "model.onnx").write_bytes(data)
    manifest = dataclasses.replace(load_manifest(TINY_MODEL), version=version, sha256=hashlib.sha256(data).hexdigest(),
                                   signature=None)
    (dest / "manifest.json").write_bytes(encode_manifest(manifest))
    sign_model_dir(dest, load_private_key(key))
    return dest


class Fleet(threading.Thread):
    """Publishes fault-free readings of a few devices until stopped; counts what it sent."""

    def __init__(self, port: int, prefix: str, unique: str) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher(port, f"fleet-{unique}")
        self.prefix = prefix
        self.stop = threading.Event()
        self.sent = 0
        self.readings = [fleet_readings(f"pump-{d}", 6000, seed=d) for d in range(DEVICES)]

    def run(self) -> None:
        for step in range(0, 6000, 10):
            if self.stop.is_set():
                break
            items = [p for d in range(DEVICES) for p in payloads(self.readings[d][step: step + 10], batch=10, prefix=self.prefix)]
            self.pub.publish(items)
            self.sent += 10 * DEVICES
            self.stop.wait(0.02)
        self.pub.close()


@pytest.fixture
def rig(tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, unique: str) -> Iterator[dict[str, object]]:
    key, _ = generate_keypair(tmp_path / "keys")
    topics = {k: f"{k}.{unique}" for k in ("anomalies", "telemetry", "deadletter", "status")}
    prefix = f"upd{unique}"
    extra = f"""[updates]
enabled = true
group = "g{unique}"
trusted_keys_dir = "{tmp_path / 'keys'}"
state_dir = "{tmp_path / 'models'}"
shadow_min_windows = 40
shadow_min_seconds = 1.0
max_artifact_bytes = 1000000
max_download_bytes = 600000
report_interval_s = 0  # no report statuses: the tests count the status events
"""
    cfg_path = toml_config(tmp_path, agent_id=f"a{unique}", mqtt_port=mqtt_port, kafka_bootstrap=kafka_bootstrap, prefix=prefix,
                           topics=topics, extra=extra)
    config = load_config(cfg_path, env={})
    config = dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, status_topic=topics["status"]))
    agent = Agent(config)
    agent.start()
    wait_for(lambda: agent.downloader is not None, 5, "downloader")
    fleet = Fleet(mqtt_port, prefix, unique)
    fleet.start()
    status = TopicReader(kafka_bootstrap, topics["status"], f"st-{unique}")
    yield {"agent": agent, "key": key, "tmp": tmp_path, "status": status, "group": f"g{unique}", "fleet": fleet,
           "port": mqtt_port, "prefix": prefix}
    fleet.stop.set()
    fleet.join(30)
    agent.stop()
    status.close()


def _statuses(rig: dict[str, object], n: int, what: str) -> list[tuple[str, str, str]]:
    reader = rig["status"]
    assert isinstance(reader, TopicReader)
    values = reader.poll_until(lambda v: len(v) >= n, 60, what)
    return [(s.action, s.model_version, s.reason) for s in map(decode_status, values)]


def _metric(agent: Agent, action: str) -> float:
    return agent.registry.get_sample_value("edgewatch_agent_model_updates_total", {"action": action}) or 0.0


def _scored(agent: Agent) -> float:
    return agent.registry.get_sample_value("edgewatch_agent_windows_scored_total") or 0.0


def test_refusals_keep_the_live_model_scoring(rig: dict[str, object]) -> None:
    agent, tmp, key, group, port, prefix = (rig[k] for k in ("agent", "tmp", "key", "group", "port", "prefix"))
    assert isinstance(agent, Agent) and isinstance(tmp, Path) and isinstance(key, Path) and isinstance(group, str)
    assert isinstance(port, int) and isinstance(prefix, str)
    live_sha = agent.pipeline.manifest.sha256 if agent.pipeline else ""
    # 1. unknown key
    stranger, _ = generate_keypair(tmp / "stranger")
    publish_model(_copy_model(TINY_MODEL, tmp / "m1", "2.0.0", stranger), host="127.0.0.1", port=port, group=group, prefix=prefix)
    # 2. incompatible: another window length
    live = load_manifest(TINY_MODEL)
    publish_model(_copy_model(TINY_MODEL, tmp / "m2", "2.0.1", key, window_length=live.window_length * 2),
                  host="127.0.0.1", port=port, group=group, prefix=prefix)
    # 3. tampered manifest: the threshold changed after signing
    announce, chunks = build_announce(_copy_model(TINY_MODEL, tmp / "m3", "2.0.2", key))
    forged = dataclasses.replace(announce, manifest=dataclasses.replace(announce.manifest, threshold=1e9))
    _raw(port, [(announce_topic(group, prefix), encode_announce(forged))])
    # 4. tampered model.onnx: other bytes under the signed manifest (chunk hashes fitted to them, unlike the signed ones)
    announce, chunks = build_announce(_copy_model(TINY_MODEL, tmp / "m4", "2.0.3", key))
    evil = [chunks[0][:-8] + b"\x00" * 8] + chunks[1:]
    evil_announce = dataclasses.replace(announce, chunk_sha256=tuple(hashlib.sha256(c).hexdigest() for c in evil))
    m = announce.manifest
    _raw(port, [(chunk_topic(m.name, m.version, i, prefix), c) for i, c in enumerate(evil)]
         + [(announce_topic(group, prefix), encode_announce(evil_announce))])

    before = _scored(agent)
    got = _statuses(rig, 4, "four refusals")
    reasons = {version: reason for action, version, reason in got if action == "refused"}
    assert set(reasons) == {"2.0.0", "2.0.1", "2.0.2", "2.0.3"}, got
    assert "unknown key" in reasons["2.0.0"]
    assert "window_length" in reasons["2.0.1"]
    assert "does not match the manifest" in reasons["2.0.2"]
    assert "differs from the signed chunk list" in reasons["2.0.3"]
    assert _metric(agent, "refused") == 4
    wait_for(lambda: _scored(agent) > before + 50, 30, "the live model to keep scoring")
    assert agent.pipeline is not None and agent.pipeline.manifest.sha256 == live_sha


def test_broken_candidates_rejected_in_shadow_and_a_good_one_promoted(rig: dict[str, object]) -> None:
    agent, tmp, key, group, port, prefix = (rig[k] for k in ("agent", "tmp", "key", "group", "port", "prefix"))
    assert isinstance(agent, Agent) and isinstance(tmp, Path) and isinstance(key, Path) and isinstance(group, str)
    assert isinstance(port, int) and isinstance(prefix, str)
    publish_model(_constant_model(tmp / "nan", "3.0.0", key, float("nan")), host="127.0.0.1", port=port, group=group, prefix=prefix)
    got = _statuses(rig, 3, "NaN candidate downloaded, shadowed, rejected")
    assert [a for a, v, _ in got if v == "3.0.0"] == ["downloaded", "shadow_started", "rejected"], got
    assert "non-finite" in got[-1][2]
    publish_model(_constant_model(tmp / "loud", "3.0.1", key, 1.0), host="127.0.0.1", port=port, group=group, prefix=prefix)
    got = _statuses(rig, 6, "loud candidate rejected")
    assert [a for a, v, _ in got if v == "3.0.1"] == ["downloaded", "shadow_started", "rejected"], got
    assert "alert rate" in got[-1][2]
    assert agent.pipeline is not None and agent.pipeline.manifest.version == load_manifest(TINY_MODEL).version
    kept = tmp / "models" / "models" / agent.pipeline.manifest.name
    assert not (kept / "3.0.0").exists() and not (kept / "3.0.1").exists()  # rejected: deleted

    publish_model(_copy_model(TINY_MODEL, tmp / "good", "3.1.0", key), host="127.0.0.1", port=port, group=group, prefix=prefix)
    got = _statuses(rig, 9, "good candidate promoted")
    assert [a for a, v, _ in got if v == "3.1.0"] == ["downloaded", "shadow_started", "promoted"], got
    assert agent.pipeline.manifest.version == "3.1.0" and (kept / "3.1.0" / "model.onnx").exists()
    assert agent.registry.get_sample_value("edgewatch_agent_model_info", {"name": "tiny", "version": "3.1.0",
                                                                          "sha256": agent.pipeline.manifest.sha256}) == 1.0 \
        or agent.pipeline.manifest.version == "3.1.0"
    assert _metric(agent, "rejected") == 2 and _metric(agent, "promoted") == 1


def test_candidate_far_above_its_signed_prediction_rejected_in_shadow(rig: dict[str, object]) -> None:
    """A forced publish of a candidate whose threshold was cut to a tenth, signed with the
    prediction of production's rate: it alerts on a third of the windows, far above the signed
    interval, and the trial rejects it naming the prediction; the live model stays."""
    agent, tmp, key, group, port, prefix = (rig[k] for k in ("agent", "tmp", "key", "group", "port", "prefix"))
    assert isinstance(agent, Agent) and isinstance(tmp, Path) and isinstance(key, Path) and isinstance(group, str)
    assert isinstance(port, int) and isinstance(prefix, str)
    live = load_manifest(TINY_MODEL)
    prediction = ExpectedAlerts(since=T0, until=T0 + 86400, devices=DEVICES, device_days=float(DEVICES),
                                alerts_per_device_day={"p05": 0.0, "p50": 0.0, "p95": 1.0},
                                window_rate={"p05": 0.0, "p50": 0.0005, "p95": 0.001}, baseline_window_rate=0.0005,
                                max_ratio=2.0)
    publish_model(_copy_model(TINY_MODEL, tmp / "low", "6.0.0", key, threshold=live.threshold / 10, expected_alerts=prediction),
                  host="127.0.0.1", port=port, group=group, prefix=prefix)
    got = _statuses(rig, 3, "candidate rejected by its signed prediction")
    assert [a for a, v, _ in got if v == "6.0.0"] == ["downloaded", "shadow_started", "rejected"], got
    assert "against its signed prediction" in got[1][2]
    assert "above the signed prediction's 0.0020 (p95 0.0010 x tolerance 2)" in got[-1][2], got[-1]
    assert agent.registry.get_sample_value("edgewatch_agent_model_rejections_total", {"reason": "prediction_high"}) == 1
    assert _metric(agent, "rejected") == 1
    before = _scored(agent)
    wait_for(lambda: _scored(agent) > before + 50, 30, "the live model to keep scoring")
    assert agent.pipeline is not None and agent.pipeline.manifest.version == live.version


def test_swap_under_load_scores_every_window(rig: dict[str, object]) -> None:
    agent, tmp, key, group, port, fleet, prefix = (rig[k] for k in ("agent", "tmp", "key", "group", "port", "fleet", "prefix"))
    assert isinstance(agent, Agent) and isinstance(tmp, Path) and isinstance(key, Path) and isinstance(group, str)
    assert isinstance(port, int) and isinstance(fleet, Fleet) and isinstance(prefix, str)
    publish_model(_copy_model(TINY_MODEL, tmp / "next", "4.0.0", key), host="127.0.0.1", port=port, group=group, prefix=prefix)
    _statuses(rig, 3, "promotion")
    fleet.stop.set()
    fleet.join(60)
    m = load_manifest(TINY_MODEL)
    per_device = fleet.sent // DEVICES
    expected_windows = DEVICES * ((per_device - m.window_length) // m.stride + 1)
    wait_for(lambda: (agent.registry.get_sample_value("edgewatch_agent_readings_received_total") or 0) == fleet.sent, 60,
             "every reading received")
    wait_for(lambda: _scored(agent) == expected_windows, 30, f"{expected_windows} windows scored")
    assert agent.pipeline is not None and agent.pipeline.manifest.version == "4.0.0"
    assert np.isclose(_scored(agent), expected_windows)


def test_hostile_announces_refused_before_anything_is_written(rig: dict[str, object]) -> None:
    """Forged size, forged chunk list, over the size cap, over the downloads bound, no free disk:
    each refused before a byte of it reaches the models folder, while the live model scores."""
    agent, tmp, key, group, port, prefix = (rig[k] for k in ("agent", "tmp", "key", "group", "port", "prefix"))
    assert isinstance(agent, Agent) and isinstance(tmp, Path) and isinstance(key, Path) and isinstance(group, str)
    assert isinstance(port, int) and isinstance(prefix, str) and agent.downloader is not None
    live_sha = agent.pipeline.manifest.sha256 if agent.pipeline else ""
    agent.downloader.free_bytes = lambda folder: 1000  # room for nothing over 500 bytes (the tiny model is 588)
    before = _scored(agent)
    # 1. a replayed trusted manifest declaring 3.2 GiB in 13,108 chunks, junk for four of them on the broker
    announce, _ = build_announce(_copy_model(TINY_MODEL, tmp / "h1", "5.0.0", key))
    size = 3_435_973_836
    name = announce.manifest.name
    junk = [(chunk_topic(name, "5.0.0", i, prefix), b"junk %d " % i * 2000) for i in range(4)]
    hashes = [hashlib.sha256(b"filler %d" % i).hexdigest() for i in range(-(-size // MAX_CHUNK_BYTES))]
    hashes[:4] = [hashlib.sha256(p).hexdigest() for _, p in junk]
    _raw(port, junk + [(announce_topic(group, prefix), encode_announce(ModelAnnounce(announce.manifest, size, MAX_CHUNK_BYTES,
                                                                                     tuple(hashes))))])
    # 2. the same size, a chunk list of junk
    announce, _ = build_announce(_copy_model(TINY_MODEL, tmp / "h2", "5.0.1", key))
    junk = [(chunk_topic(name, "5.0.1", 0, prefix), b"j" * announce.size)]
    forged = dataclasses.replace(announce, chunk_sha256=(hashlib.sha256(junk[0][1]).hexdigest(),))
    _raw(port, junk + [(announce_topic(group, prefix), encode_announce(forged))])
    # 3.-5. genuine and signed, but over updates.max_artifact_bytes, updates.max_download_bytes, the free disk
    publish_model(_junk_model(tmp / "h3", "5.0.2", key, 1_200_000), host="127.0.0.1", port=port, group=group, prefix=prefix)
    publish_model(_junk_model(tmp / "h4", "5.0.3", key, 800_000), host="127.0.0.1", port=port, group=group, prefix=prefix)
    publish_model(_copy_model(TINY_MODEL, tmp / "h5", "5.0.4", key), host="127.0.0.1", port=port, group=group, prefix=prefix)

    got = _statuses(rig, 5, "five refusals")
    reasons = {version: reason for action, version, reason in got if action == "refused"}
    assert set(reasons) == {"5.0.0", "5.0.1", "5.0.2", "5.0.3", "5.0.4"}, got
    assert "size 3435973836 differs from the signed size 588" in reasons["5.0.0"]
    assert "differs from the signed chunk list" in reasons["5.0.1"]
    assert "over updates.max_artifact_bytes (1000000)" in reasons["5.0.2"]
    assert "over updates.max_download_bytes (600000)" in reasons["5.0.3"]
    assert "not enough free disk: 1176 bytes needed" in reasons["5.0.4"]
    assert _metric(agent, "refused") == 5 and agent.downloader.chunks_written == 0
    assert [p for p in (tmp / "models").rglob("*") if p.is_file()] == []
    wait_for(lambda: _scored(agent) > before + 50, 30, "the live model to keep scoring")
    assert agent.pipeline is not None and agent.pipeline.manifest.sha256 == live_sha


def _raw(port: int, messages: list[tuple[str, bytes]]) -> None:
    pub = Publisher(port, f"raw-{hashlib.sha1(messages[-1][1]).hexdigest()[:8]}")
    infos = [pub.client.publish(t, p, qos=1, retain=True) for t, p in messages]
    for info in infos:
        info.wait_for_publish(10)
    pub.close()
