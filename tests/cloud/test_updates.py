"""Model distribution over a real Mosquitto: retained chunks + announce, verified on arrival;
hostile announces refused before anything is written; partial downloads bounded and cleaned."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.distribute import build_announce, publish_model
from cloud.keys import generate_keypair, load_private_key, sign_manifest, sign_model_dir
from edge.contract import Calibration, Channel, ConfigError, ModelManifest, encode_manifest
from edge.contract.update import MAX_CHUNK_BYTES, ModelAnnounce, announce_topic, chunk_topic, encode_announce, transfer_of
from edge.detector import load_manifest
from edge.signing import load_trusted_keys
from edge.updates import ModelDownloader
from tests.tools import wait_for

ONNX = bytes(range(256)) * 3 + b"tail"
CHUNK = 100  # 8 chunks of the test artifact


def _model(tmp: Path, version: str, key: Path) -> Path:
    model = tmp / f"model-{version}"
    model.mkdir()
    (model / "model.onnx").write_bytes(ONNX + version.encode())
    manifest = ModelManifest("pump", "dense_ae", version, hashlib.sha256(ONNX + version.encode()).hexdigest(), (Channel("a"),),
                             8, 4, 1.0, 0.5, Calibration("quantile"), 17, "1.17", "fp", {}, "2026-11-27T00:00:00Z")
    (model / "manifest.json").write_bytes(encode_manifest(manifest))
    sign_model_dir(model, load_private_key(key), chunk_size=CHUNK)
    return model


class Recorder:
    def __init__(self) -> None:
        self.ready: list[Path] = []
        self.refused: list[tuple[str, str, str]] = []

    def on_ready(self, path: Path, announce: ModelAnnounce) -> None:
        self.ready.append(path)

    def on_refused(self, name: str, version: str, reason: str) -> None:
        self.refused.append((name, version, reason))

    def wait(self, n: int = 1, timeout_s: float = 15) -> None:
        wait_for(lambda: len(self.ready) + len(self.refused) >= n, timeout_s, f"{n} outcomes")


def _downloader(port: int, tmp: Path, keys: Path, group: str, rec: Recorder, **kw: object) -> ModelDownloader:
    d = ModelDownloader(host="127.0.0.1", port=port, group=group, state_dir=tmp / "state", trusted_keys=load_trusted_keys(keys),
                        on_ready=rec.on_ready, on_refused=rec.on_refused, client_id=f"dl-{group}", **kw)  # type: ignore[arg-type]
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


def _junk_chunks(announce: ModelAnnounce, indices: range) -> list[tuple[str, bytes]]:
    m = announce.manifest
    return [(chunk_topic(m.name, m.version, i), b"junk %d " % i * 2000) for i in indices]


def _cut_off_partial(tmp: Path, model: Path) -> Path:
    """What a first, cut-off attempt leaves behind: its announce and three verified chunks on disk."""
    announce, chunks = build_announce(model)
    partial = tmp / "state" / "downloads" / announce.manifest.name / announce.manifest.version
    partial.mkdir(parents=True)
    (partial / "announce.json").write_bytes(encode_announce(announce))
    for i in (0, 1, 2):
        (partial / f"{i}.chunk").write_bytes(chunks[i])
    return partial


def _assert_refused_before_writing(port: int, tmp: Path, keys: Path, group: str, reason: str, **kw: object) -> None:
    """A downloader on ``group`` refuses what is announced there, naming ``reason``, and writes nothing."""
    rec = Recorder()
    d = _downloader(port, tmp, keys, group, rec, **kw)
    rec.wait()
    d.stop()
    assert rec.ready == [] and reason in rec.refused[0][2], rec.refused
    assert d.chunks_written == 0 and not (tmp / "state").exists()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, _ = generate_keypair(tmp_path / "keys")
    return private, tmp_path / "keys"


def test_signed_model_arrives_in_chunks(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    model = _model(tmp_path, "1.0.1", keys[0])
    announce = publish_model(model, host="127.0.0.1", port=mqtt_port, group=f"g{unique}")
    assert len(announce.chunk_sha256) == 8
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)  # connects after publishing: retained
    rec.wait()
    d.stop()
    assert rec.refused == []
    assert (rec.ready[0] / "model.onnx").read_bytes() == (model / "model.onnx").read_bytes()
    assert (rec.ready[0] / "manifest.json").read_bytes() == (model / "manifest.json").read_bytes()
    assert _files(tmp_path / "state" / "downloads") == ["pump"]  # the finished transfer's partial is gone


def test_unknown_key_refused_before_download(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    stranger, _ = generate_keypair(tmp_path / "stranger")
    publish_model(_model(tmp_path, "2.0.0", stranger), host="127.0.0.1", port=mqtt_port, group=f"g{unique}")
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)
    rec.wait()
    d.stop()
    assert rec.ready == [] and "unknown key" in rec.refused[0][2]
    assert d.chunks_written == 0


def test_tampered_manifest_and_tampered_bytes_refused(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    model = _model(tmp_path, "3.0.0", keys[0])
    announce, chunks = build_announce(model)
    # 1. the manifest changed after signing
    forged = dataclasses.replace(announce, manifest=dataclasses.replace(announce.manifest, threshold=1e9))
    _raw_publish(mqtt_port, [(announce_topic(f"a{unique}"), encode_announce(forged))])
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"a{unique}", rec)
    rec.wait()
    d.stop()
    assert rec.ready == [] and "does not match the manifest" in rec.refused[0][2]
    # 2. a trusted signer's manifest whose transfer describes other bytes than its sha256: the chunks
    # match the signed chunk list, and the signed sha256 still catches the assembled file
    evil = b"X" * CHUNK + ONNX[CHUNK:] + b"3.0.1"
    manifest = dataclasses.replace(load_manifest(model), version="3.0.1", transfer=transfer_of(evil, CHUNK))
    signed = sign_manifest(manifest, load_private_key(keys[0]))
    evil_chunks = [evil[i: i + CHUNK] for i in range(0, len(evil), CHUNK)]
    evil_announce = ModelAnnounce(signed, len(evil), CHUNK, tuple(hashlib.sha256(c).hexdigest() for c in evil_chunks))
    _raw_publish(mqtt_port, [(chunk_topic("pump", "3.0.1", i), c) for i, c in enumerate(evil_chunks)]
                 + [(announce_topic(f"b{unique}"), encode_announce(evil_announce))])
    rec2 = Recorder()
    d2 = _downloader(mqtt_port, tmp_path / "second", keys[1], f"b{unique}", rec2)
    rec2.wait()
    d2.stop()
    assert rec2.ready == [] and "signed sha256" in rec2.refused[0][2]
    assert _files(tmp_path / "second" / "state") == ["downloads", "downloads/pump"]  # the refused partial is gone


def test_interrupted_transfer_resumes_with_missing_chunks(mqtt_port: int, tmp_path: Path, unique: str,
                                                          keys: tuple[Path, Path]) -> None:
    model = _model(tmp_path, "4.0.0", keys[0])
    _cut_off_partial(tmp_path, model)
    publish_model(model, host="127.0.0.1", port=mqtt_port, group=f"g{unique}")
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)
    rec.wait()
    d.stop()
    assert rec.refused == [] and len(rec.ready) == 1
    assert d.chunks_written == 8 - 3


def test_forged_size_refused_before_anything_is_written(mqtt_port: int, tmp_path: Path, unique: str,
                                                        keys: tuple[Path, Path]) -> None:
    """A replayed trusted manifest declaring 3.2 GiB in 13,108 chunks, some of them on the broker."""
    model = _model(tmp_path, "5.0.0", keys[0])
    announce, _ = build_announce(model)
    size = 3_435_973_836
    junk = _junk_chunks(announce, range(8, 12))
    hashes = [hashlib.sha256(b"filler %d" % i).hexdigest() for i in range(-(-size // MAX_CHUNK_BYTES))]
    for topic, payload in junk:
        hashes[int(topic.rpartition("/")[2])] = hashlib.sha256(payload).hexdigest()
    forged = ModelAnnounce(announce.manifest, size, MAX_CHUNK_BYTES, tuple(hashes))
    _raw_publish(mqtt_port, junk + [(announce_topic(f"g{unique}"), encode_announce(forged))])
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)
    rec.wait()
    assert rec.ready == [] and "differs from the signed size" in rec.refused[0][2], rec.refused
    assert d.chunks_written == 0 and not (tmp_path / "state").exists()
    # the genuine announce of the same version still goes through afterwards
    publish_model(model, host="127.0.0.1", port=mqtt_port, group=f"g{unique}")
    rec.wait(2)
    d.stop()
    assert len(rec.ready) == 1 and (rec.ready[0] / "model.onnx").read_bytes() == (model / "model.onnx").read_bytes()


def test_forged_chunk_list_refused_before_anything_is_written(mqtt_port: int, tmp_path: Path, unique: str,
                                                              keys: tuple[Path, Path]) -> None:
    announce, _ = build_announce(_model(tmp_path, "5.1.0", keys[0]))
    junk = _junk_chunks(announce, range(len(announce.chunk_sha256)))
    forged = dataclasses.replace(announce, chunk_sha256=tuple(hashlib.sha256(p).hexdigest() for _, p in junk))
    _raw_publish(mqtt_port, junk + [(announce_topic(f"g{unique}"), encode_announce(forged))])
    _assert_refused_before_writing(mqtt_port, tmp_path, keys[1], f"g{unique}", "differs from the signed chunk list")


def test_manifest_signed_without_transfer_refused_and_not_published(mqtt_port: int, tmp_path: Path, unique: str,
                                                                    keys: tuple[Path, Path]) -> None:
    """A manifest signed by an older edgewatch (no size or chunk list under the signature)."""
    model = _model(tmp_path, "5.2.0", keys[0])
    announce, chunks = build_announce(model)
    old = sign_manifest(dataclasses.replace(announce.manifest, transfer=None), load_private_key(keys[0]))
    (model / "manifest.json").write_bytes(encode_manifest(old))
    with pytest.raises(ConfigError, match="sign it again"):
        publish_model(model, host="127.0.0.1", port=mqtt_port, group=f"g{unique}")
    m = announce.manifest
    _raw_publish(mqtt_port, [(chunk_topic(m.name, m.version, i), c) for i, c in enumerate(chunks)]
                 + [(announce_topic(f"g{unique}"), encode_announce(dataclasses.replace(announce, manifest=old)))])
    _assert_refused_before_writing(mqtt_port, tmp_path, keys[1], f"g{unique}", "does not cover the artifact's size")


@pytest.mark.parametrize(("limits", "reason"), [
    ({"max_artifact_bytes": 700}, "over updates.max_artifact_bytes (700)"),
    ({"max_download_bytes": 1000}, "over updates.max_download_bytes (1000)"),
    ({"free_bytes": lambda folder: 1500}, "not enough free disk: 1554 bytes needed"),
])
def test_limits_refuse_before_anything_is_written(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path],
                                                  limits: dict[str, object], reason: str) -> None:
    publish_model(_model(tmp_path, "6.0.0", keys[0]), host="127.0.0.1", port=mqtt_port, group=f"g{unique}")  # 777 bytes
    _assert_refused_before_writing(mqtt_port, tmp_path, keys[1], f"g{unique}", reason, **limits)


def test_refusal_removes_the_partial_download(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    """A resumable partial from an earlier run, then the disk fills up: refused, partial deleted."""
    model = _model(tmp_path, "6.1.0", keys[0])
    partial = _cut_off_partial(tmp_path, model)
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec, free_bytes=lambda folder: 100)
    assert len(_files(partial)) == 4  # resumable: kept at start
    publish_model(model, host="127.0.0.1", port=mqtt_port, group=f"g{unique}")
    rec.wait()
    d.stop()
    assert rec.ready == [] and "not enough free disk" in rec.refused[0][2], rec.refused
    assert not partial.exists()


def test_superseded_transfer_abandoned_and_removed(mqtt_port: int, tmp_path: Path, unique: str, keys: tuple[Path, Path]) -> None:
    first, first_chunks = build_announce(_model(tmp_path, "7.0.0", keys[0]))
    m = first.manifest
    _raw_publish(mqtt_port, [(chunk_topic(m.name, m.version, i), first_chunks[i]) for i in (0, 1, 2)]
                 + [(announce_topic(f"g{unique}"), encode_announce(first))])  # five chunks never come
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)
    wait_for(lambda: d.chunks_written == 3, 15, "three chunks of 7.0.0")
    stalled = tmp_path / "state" / "downloads" / "pump" / "7.0.0"
    assert len(_files(stalled)) == 4
    publish_model(_model(tmp_path, "7.1.0", keys[0]), host="127.0.0.1", port=mqtt_port, group=f"g{unique}")
    rec.wait()
    d.stop()
    assert rec.refused == [] and [p.name for p in rec.ready] == ["7.1.0"]
    assert _files(tmp_path / "state" / "downloads") == ["pump"]  # 7.0.0 abandoned and deleted, 7.1.0 done


def test_start_deletes_stale_partials_and_keeps_a_resumable_one(mqtt_port: int, tmp_path: Path, unique: str,
                                                                keys: tuple[Path, Path]) -> None:
    downloads = tmp_path / "state" / "downloads"
    # what an older agent left after a forged announce: its manifest.json and junk chunks
    legacy = downloads / "pump" / "0.9.0"
    legacy.mkdir(parents=True)
    (legacy / "manifest.json").write_bytes(b"{}")
    for i in range(4):
        (legacy / f"{i}.chunk").write_bytes(b"j" * 4096)
    (downloads / "stray.bin").write_bytes(b"x" * 100)
    # an announce.json whose size was edited after it was written
    announce, chunks = build_announce(_model(tmp_path, "8.0.0", keys[0]))
    (downloads / "pump" / "8.0.0").mkdir()
    (downloads / "pump" / "8.0.0" / "announce.json").write_bytes(encode_announce(dataclasses.replace(announce, size=800)))
    # a resumable transfer with one good chunk, one bad chunk and a half-written one
    good, good_chunks = build_announce(_model(tmp_path, "8.1.0", keys[0]))
    keep = downloads / "pump" / "8.1.0"
    keep.mkdir()
    (keep / "announce.json").write_bytes(encode_announce(good))
    (keep / "0.chunk").write_bytes(good_chunks[0])
    (keep / "1.chunk").write_bytes(b"bad" * 10)
    (keep / "2.tmp").write_bytes(good_chunks[2][:10])
    rec = Recorder()
    d = _downloader(mqtt_port, tmp_path, keys[1], f"g{unique}", rec)  # nothing announced to this group
    d.stop()
    assert _files(downloads) == ["pump", "pump/8.1.0", "pump/8.1.0/0.chunk", "pump/8.1.0/announce.json"]
    assert rec.refused == [] and rec.ready == []
