"""Model distribution over a real Mosquitto: retained chunks + announce, verified on arrival."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.distribute import build_announce, publish_model
from cloud.keys import generate_keypair, load_private_key, sign_model_dir
from edge.contract import Calibration, Channel, ModelManifest, encode_manifest
from edge.contract.update import ModelAnnounce, announce_topic, chunk_topic, encode_announce
from edge.signing import load_trusted_keys
from edge.updates import ModelDownloader

ONNX = bytes(range(256)) * 3 + b"tail"


def _model(tmp: Path, version: str, key: Path) -> Path:
    model = tmp / f"model-{version}"
    model.mkdir()
    (model / "model.onnx").write_bytes(ONNX + version.encode())
    manifest = ModelManifest("pump", "dense_ae", version, hashlib.sha256(ONNX + version.encode()).hexdigest(), (Channel("a"),),
                             8, 4, 1.0, 0.5, Calibration("quantile"), 17, "1.17", "fp", {}, "2026-11-27T00:00:00Z")
    (model / "manifest.json").write_bytes(encode_manifest(manifest))
    sign_model_dir(model, load_private_key(key))
    return model


class Recorder:
    def __init__(self) -> None:
        self.ready: list[Path] = []
        self.refused: list[tuple[str, str, str]] = []
        self.event = threading.Event()

    def on_ready(self, path: Path, announce: ModelAnnounce) -> None:
        self.ready.append(path)
        self.event.set()

    def on_refused(self, name: str, version: str, reason: str) -> None:
        self.refused.append((name, version, reason))
        self.event.set()


def _downloader(port: int, tmp: Path, keys: Path, group: str, rec: Recorder) -> ModelDownloader:
    d = ModelDownloader(host="127.0.0.1", port=port, group=group, state_dir=tmp / "state", trusted_keys=load_trusted_keys(keys),
                        on_ready=rec.on_ready, on_refused=rec.on_refused, client_id=f"dl-{group}")
    d.start()
    return d


def _raw_publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, _ = generate_keypair(tmp_path / "keys")
    return private, tmp_path / "keys"


def test_signed_model_arrives_in_chunks(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    model = _model(tmp_path, "1.0.1", keys[0])
    announce = publish_model(model, host="127.0.0.1", port=mqtt_port, group=f"g{unique}", chunk_size=100)
    assert len(announce.chunk_sha256) == 8
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)  # connects after publishing: retained
    assert rec.event.wait(15)
    d.stop()
    assert rec.refused == []
    assert (rec.ready[0] / "model.onnx").read_bytes() == (model / "model.onnx").read_bytes()
    assert (rec.ready[0] / "manifest.json").read_bytes() == (model / "manifest.json").read_bytes()


def test_unknown_key_refused_before_download(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    stranger, _ = generate_keypair(tmp_path / "stranger")
    publish_model(_model(tmp_path, "2.0.0", stranger), host="127.0.0.1", port=mqtt_port, group=f"g{unique}", chunk_size=100)
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)
    assert rec.event.wait(15)
    d.stop()
    assert rec.ready == [] and "unknown key" in rec.refused[0][2]
    assert d.chunks_written == 0


def test_tampered_manifest_and_tampered_bytes_refused(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    model = _model(tmp_path, "3.0.0", keys[0])
    announce, chunks = build_announce(model, chunk_size=100)
    # 1. the manifest changed after signing
    forged = dataclasses.replace(announce, manifest=dataclasses.replace(announce.manifest, threshold=1e9))
    _raw_publish(mqtt_port, [(announce_topic(f"a{unique}"), encode_announce(forged))])
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"a{unique}", rec)
    assert rec.event.wait(15)
    d.stop()
    assert rec.ready == [] and "does not match the manifest" in rec.refused[0][2]
    # 2. the bytes changed, with chunk hashes that match the new bytes: the signed sha256 still catches it
    evil = [b"X" * len(chunks[0])] + chunks[1:]
    evil_announce = dataclasses.replace(announce, chunk_sha256=tuple(hashlib.sha256(c).hexdigest() for c in evil))
    m = announce.manifest
    _raw_publish(mqtt_port, [(chunk_topic(m.name, m.version, i), c) for i, c in enumerate(evil)]
                 + [(announce_topic(f"b{unique}"), encode_announce(evil_announce))])
    rec2 = Recorder()
    d2 = _downloader(mqtt_port, tmp_path / "second", keys[1], f"b{unique}", rec2)
    assert rec2.event.wait(15)
    d2.stop()
    assert rec2.ready == [] and "signed sha256" in rec2.refused[0][2]


def test_interrupted_transfer_resumes_with_missing_chunks(mqtt_port: int, tmp_path: Path, unique: str,
                                                          keys: tuple[Path, Path]) -> None:
    model = _model(tmp_path, "4.0.0", keys[0])
    announce, chunks = build_announce(model, chunk_size=100)
    # what a first, cut-off attempt left behind: three verified chunks on disk
    partial = tmp_path / "state" / "downloads" / "pump" / "4.0.0"
    partial.mkdir(parents=True)
    for i in (0, 1, 2):
        (partial / f"{i}.chunk").write_bytes(chunks[i])
    publish_model(model, host="127.0.0.1", port=mqtt_port, group=f"g{unique}", chunk_size=100)
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)
    assert rec.event.wait(15)
    d.stop()
    assert rec.refused == [] and len(rec.ready) == 1
    assert d.chunks_written == len(chunks) - 3
