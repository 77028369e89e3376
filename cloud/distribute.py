"""Publishing a registry version to devices over MQTT (retained announce + retained chunks).

See :mod:`edge.contract.update` for the protocol. Chunks go first, the announce last, so a
device never sees an announce whose chunks are not on the broker yet.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import BrokerUnavailable
from edge.contract.update import MAX_CHUNK_BYTES, ModelAnnounce, announce_topic, chunk_topic, encode_announce
from edge.detector import load_manifest

log = logging.getLogger(__name__)


def build_announce(model_dir: Path, chunk_size: int = MAX_CHUNK_BYTES) -> tuple[ModelAnnounce, list[bytes]]:
    data = (Path(model_dir) / "model.onnx").read_bytes()
    chunks = [data[i: i + chunk_size] for i in range(0, len(data), chunk_size)]
    announce = ModelAnnounce(load_manifest(model_dir), len(data), chunk_size,
                             tuple(hashlib.sha256(c).hexdigest() for c in chunks))
    return announce, chunks


def publish_model(model_dir: Path, *, host: str, port: int, group: str, prefix: str = "edgewatch",
                  chunk_size: int = MAX_CHUNK_BYTES, timeout_s: float = 30.0,
                  username: str | None = None, password: str | None = None) -> ModelAnnounce:
    """Publish the artifact's chunks and then its announce, retained at QoS 1; raises
    :class:`BrokerUnavailable` if the broker does not acknowledge every message in time."""
    announce, chunks = build_announce(model_dir, chunk_size)
    m = announce.manifest
    if m.signature is None:
        raise BrokerUnavailable(f"{model_dir}: refusing to publish an unsigned model (edgewatch keys sign)")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgewatch-registry-{m.name}-{m.version}")
    if username:
        client.username_pw_set(username, password)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    try:
        client.connect(host, port)
    except OSError as exc:
        raise BrokerUnavailable(f"cannot reach MQTT broker {host}:{port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise BrokerUnavailable(f"MQTT broker {host}:{port} did not accept the connection in {timeout_s} s")
        messages = [(chunk_topic(m.name, m.version, i, prefix), c) for i, c in enumerate(chunks)]
        messages.append((announce_topic(group, prefix), encode_announce(announce)))
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(timeout_s)
            if not info.is_published():
                raise BrokerUnavailable(f"MQTT broker did not acknowledge {topic} within {timeout_s} s")
        log.info("model_published name=%s version=%s group=%s chunks=%d bytes=%d", m.name, m.version, group, len(chunks), announce.size)
    finally:
        client.disconnect()
        client.loop_stop()
    return announce
