"""Receiving model updates on the device: retained MQTT announce + chunks -> a verified model folder.

The downloader has its own MQTT connection (persistent session, automatic reconnect), so a
transfer never competes with reading intake. Its callbacks run on that client's network thread
and do only small file writes. What it guarantees before calling ``on_ready``: the manifest is
signed by a trusted key, the agent's compatibility check passed, and the assembled
``model.onnx`` matches the signed sha256. Verified chunks are kept on disk, so a transfer cut
by a dropped connection resumes with the chunks still missing.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import ContractError, ManifestError, encode_manifest
from edge.contract.update import ModelAnnounce, announce_topic, decode_announce
from edge.signing import TrustedKeys, verify_manifest

log = logging.getLogger(__name__)

ReadyCallback = Callable[[Path, ModelAnnounce], None]
RefusedCallback = Callable[[str, str, str], None]  # name, version, reason
CompatibleCheck = Callable[[ModelAnnounce], str | None]  # returns a reason to refuse, or None


class ModelDownloader:
    def __init__(self, *, host: str, port: int, group: str, state_dir: Path, trusted_keys: TrustedKeys,
                 on_ready: ReadyCallback, on_refused: RefusedCallback, compatible: CompatibleCheck = lambda a: None,
                 prefix: str = "edgewatch", client_id: str = "edgewatch-updates",
                 username: str | None = None, password: str | None = None, tls_ca_file: str | None = None) -> None:
        self.prefix = prefix
        self.group = group
        self.state_dir = Path(state_dir)
        self.trusted_keys = trusted_keys
        self.on_ready = on_ready
        self.on_refused = on_refused
        self.compatible = compatible
        self.skip: set[tuple[str, str]] = set()  # versions already live, ready or refused
        self._active: dict[str, ModelAnnounce] = {}  # chunk topic prefix -> announce being fetched
        self.chunks_written = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if username:
            self._client.username_pw_set(username, password)
        if tls_ca_file:
            self._client.tls_set(ca_certs=tls_ca_file)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def start(self) -> None:
        """Connect asynchronously; the network loop runs in paho's thread and reconnects by itself."""
        self._client.connect_async(self._host, self._port)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe(announce_topic(self.group, self.prefix), qos=1)
        for topic in self._active:
            client.subscribe(topic + "+", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic.endswith("/announce"):
                self._on_announce(bytes(msg.payload))
            else:
                self._on_chunk(msg.topic, bytes(msg.payload))
        except Exception:  # a bad update must never take the downloader (or the agent) down
            log.exception("model_update_failed topic=%s", msg.topic)

    def _dir(self, kind: str, name: str, version: str) -> Path:
        return self.state_dir / kind / name / version

    def _on_announce(self, payload: bytes) -> None:
        try:
            announce = decode_announce(payload)
        except ContractError as exc:
            self.on_refused("unknown", "unknown", f"malformed announce: {exc}")
            return
        m = announce.manifest
        if (m.name, m.version) in self.skip:
            return
        self.skip.add((m.name, m.version))
        try:
            verify_manifest(m, self.trusted_keys)
        except ManifestError as exc:
            self._refuse(m.name, m.version, str(exc))
            return
        reason = self.compatible(announce)
        if reason:
            self._refuse(m.name, m.version, f"incompatible: {reason}")
            return
        work = self._dir("downloads", m.name, m.version)
        work.mkdir(parents=True, exist_ok=True)
        (work / "manifest.json").write_bytes(encode_manifest(m))
        topic = f"{self.prefix}/models/{m.name}/{m.version}/chunks/"
        self._active[topic] = announce
        log.info("model_download_started name=%s version=%s chunks=%d", m.name, m.version, len(announce.chunk_sha256))
        if not self._maybe_finish(topic, announce):
            self._client.subscribe(topic + "+", qos=1)

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        prefix, _, index_text = topic.rpartition("/")
        announce = self._active.get(prefix + "/")
        if announce is None or not index_text.isdigit():
            return
        index = int(index_text)
        if index >= len(announce.chunk_sha256) or hashlib.sha256(payload).hexdigest() != announce.chunk_sha256[index]:
            log.warning("model_chunk_rejected topic=%s reason=hash_mismatch", topic)
            return
        m = announce.manifest
        path = self._dir("downloads", m.name, m.version) / f"{index}.chunk"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(payload)
            tmp.replace(path)
            self.chunks_written += 1
        self._maybe_finish(prefix + "/", announce)

    def _maybe_finish(self, topic: str, announce: ModelAnnounce) -> bool:
        m = announce.manifest
        work = self._dir("downloads", m.name, m.version)
        parts = [work / f"{i}.chunk" for i in range(len(announce.chunk_sha256))]
        if not all(p.exists() for p in parts):
            return False
        self._active.pop(topic, None)
        self._client.unsubscribe(topic + "+")
        data = b"".join(p.read_bytes() for p in parts)
        if hashlib.sha256(data).hexdigest() != m.sha256:
            shutil.rmtree(work, ignore_errors=True)
            self._refuse(m.name, m.version, "assembled model.onnx does not match the signed sha256")
            return True
        target = self._dir("models", m.name, m.version)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        (target / "model.onnx").write_bytes(data)
        (target / "manifest.json").write_bytes(encode_manifest(m))
        shutil.rmtree(work, ignore_errors=True)
        log.info("model_downloaded name=%s version=%s bytes=%d", m.name, m.version, len(data))
        self.on_ready(target, announce)
        return True

    def _refuse(self, name: str, version: str, reason: str) -> None:
        log.warning("model_update_refused name=%s version=%s reason=%s", name, version, reason)
        self.on_refused(name, version, reason)
