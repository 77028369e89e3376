"""Publishing a registry version to devices over MQTT (retained announce + retained chunks), and
the one publishing path the signed operator commands share (:func:`publish_messages`).

See :mod:`edge.contract.update` for the protocol. Chunks go first, the announce last, so a
device never sees an announce whose chunks are not on the broker yet. The chunk size is the one
the manifest was signed with (:func:`cloud.keys.sign_model_dir`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import BrokerUnavailable, ConfigError
from edge.contract.update import ModelAnnounce, announce_topic, chunk_hashes, chunk_topic, encode_announce, transfer_of
from edge.detector import load_manifest

log = logging.getLogger(__name__)


def build_announce(model_dir: Path) -> tuple[ModelAnnounce, list[bytes]]:
    """The announce and the chunks of a signed model folder, cut as its signed ``transfer`` says.

    Raises :class:`ConfigError` for what devices would refuse: an unsigned manifest, one without
    ``transfer`` (signed by an older edgewatch: sign it again), or a ``model.onnx`` that is not
    the artifact it describes.
    """
    manifest = load_manifest(model_dir)
    data = (Path(model_dir) / "model.onnx").read_bytes()
    t = manifest.transfer
    if manifest.signature is None:
        raise ConfigError(f"{model_dir}: refusing to publish an unsigned model (edgewatch keys sign)")
    if t is None:
        raise ConfigError(f"{model_dir}: the manifest does not sign the artifact's size and chunk list, so devices would "
                          "refuse it; sign it again (edgewatch keys sign, or registry publish --key)")
    if transfer_of(data, t.chunk_size) != t:
        raise ConfigError(f"{model_dir}: model.onnx ({len(data)} bytes) is not the artifact the signed manifest describes "
                          f"({t.size} bytes in {t.chunk_size}-byte chunks)")
    chunks = [data[i: i + t.chunk_size] for i in range(0, len(data), t.chunk_size)]
    return ModelAnnounce(manifest, len(data), t.chunk_size, chunk_hashes(data, t.chunk_size)), chunks


def publish_model(model_dir: Path, *, host: str, port: int, group: str, prefix: str = "edgewatch", timeout_s: float = 30.0,
                  username: str | None = None, password: str | None = None) -> ModelAnnounce:
    """Publish the artifact's chunks and then its announce, retained at QoS 1; raises
    :class:`BrokerUnavailable` if the broker does not acknowledge every message in time, and
    :class:`ConfigError` (before connecting) for a model devices would refuse (:func:`build_announce`)."""
    announce, chunks = build_announce(model_dir)
    m = announce.manifest
    messages = [(chunk_topic(m.name, m.version, i, prefix), c) for i, c in enumerate(chunks)]
    messages.append((announce_topic(group, prefix), encode_announce(announce)))
    publish_messages(messages, host=host, port=port, client_id=f"edgewatch-registry-{m.name}-{m.version}", retain=True,
                     timeout_s=timeout_s, username=username, password=password)
    log.info("model_published name=%s version=%s group=%s chunks=%d bytes=%d", m.name, m.version, group, len(chunks), announce.size)
    return announce


def publish_messages(messages: Sequence[tuple[str, bytes]], *, host: str, port: int, client_id: str, retain: bool,
                     timeout_s: float = 30.0, username: str | None = None, password: str | None = None,
                     tls_ca_file: str | None = None) -> None:
    """Publish ``(topic, payload)`` pairs in order at QoS 1 on a fresh connection, each acknowledged
    by the broker before the next; raises :class:`BrokerUnavailable` when the broker cannot be
    reached or does not acknowledge in ``timeout_s``."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if username:
        client.username_pw_set(username, password)
    if tls_ca_file:
        client.tls_set(ca_certs=tls_ca_file)
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
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(timeout_s)
            if not info.is_published():
                raise BrokerUnavailable(f"MQTT broker did not acknowledge {topic} within {timeout_s} s")
    finally:
        client.disconnect()
        client.loop_stop()
