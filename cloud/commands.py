"""Signed operator commands to agents (``edgewatch incidents label ID --new-normal``).

The command (:mod:`edge.contract.command`) is signed with the same Ed25519 key as model
manifests (``edgewatch keys generate``) and published at QoS 1, not retained, on
``<prefix>/commands/<agent_id>`` through :func:`cloud.distribute.publish_messages`. Not retained:
a command is one decision at one time, and a retained one would come back to every new session.
What the agent did comes back as a status event on Kafka (``edgewatch.status``), which
:class:`StatusWatch` waits for.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from cloud.distribute import publish_messages
from edge.contract import BrokerUnavailable, ContractError, Signature
from edge.contract.command import DeviceCommand, command_bytes, command_topic, encode_command
from edge.contract.update import ModelStatus, decode_status
from edge.kafka_security import KafkaSecurity, client_kwargs
from edge.signing import key_id

log = logging.getLogger(__name__)


def new_normal_command(*, agent_id: str, device_id: str, incident_id: str, issued_at: float) -> DeviceCommand:
    """An unsigned ``new_normal`` command with a fresh random ``command_id``."""
    return DeviceCommand(action="new_normal", agent_id=agent_id, device_id=device_id, incident_id=incident_id,
                         issued_at=float(issued_at), command_id=uuid.uuid4().hex)


def sign_command(command: DeviceCommand, private_key: Ed25519PrivateKey) -> DeviceCommand:
    """The command with an Ed25519 signature over :func:`~edge.contract.command.command_bytes`."""
    unsigned = command.unsigned()
    value = base64.b64encode(private_key.sign(command_bytes(unsigned))).decode()
    return dataclasses.replace(unsigned, signature=Signature(key_id(private_key.public_key()), value))


def publish_command(command: DeviceCommand, *, host: str, port: int, prefix: str = "edgewatch", timeout_s: float = 30.0,
                    username: str | None = None, password: str | None = None, tls_ca_file: str | None = None) -> str:
    """Publish ``command`` to its agent's topic (QoS 1, not retained) and return the topic; raises
    :class:`BrokerUnavailable` when the broker does not acknowledge it in ``timeout_s``."""
    topic = command_topic(command.agent_id, prefix)
    publish_messages([(topic, encode_command(command))], host=host, port=port, client_id=f"edgewatch-command-{command.command_id}",
                     retain=False, timeout_s=timeout_s, username=username, password=password, tls_ca_file=tls_ca_file)
    log.info("command_published action=%s agent_id=%s device_id=%s command_id=%s topic=%s", command.action,
             command.agent_id, command.device_id, command.command_id, topic)
    return topic


class StatusWatch:
    """Reads a status topic from its end at creation (make it before publishing), for the status
    of one command. No consumer group: partitions are assigned directly, nothing is committed.
    Raises :class:`BrokerUnavailable` when Kafka cannot be reached."""

    def __init__(self, bootstrap: str, security: KafkaSecurity, topic: str) -> None:
        self.topic = topic
        try:
            self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                           auto_offset_reset="earliest", **client_kwargs(security))
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot reach Kafka {bootstrap} to wait for the status: {exc}") from None
        self._assigned = self._assign(from_end=True)

    def _assign(self, *, from_end: bool) -> bool:
        """Assign every partition of the topic; False while it does not exist (the agent creates it
        with its first status, then everything in it is new, so it is read from the start)."""
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        if from_end:
            self._consumer.seek_to_end(*tps)
            for tp in tps:
                self._consumer.position(tp)  # resolve the end now, before the command is sent
        return True

    def wait(self, command_id: str, timeout_s: float) -> ModelStatus | None:
        """The first status naming ``command_id`` within ``timeout_s``, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._assigned:
                self._assigned = self._assign(from_end=False)
                if not self._assigned:
                    time.sleep(0.5)
                    continue
            for records in self._consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        status = decode_status(record.value)
                    except ContractError:
                        continue
                    if status.command_id == command_id:
                        return status
        return None

    def close(self) -> None:
        self._consumer.close()
