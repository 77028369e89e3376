"""Admin calls against the local Kafka: the project's topics and how durable they are, and who leads.

:func:`topic_durability` is the one place that decides replication: a topic the project creates
(the demo's and the tests', the internal offsets and transaction topics, and what brokers auto-create)
gets replication factor 3 and ``min.insync.replicas=2`` on a cluster of three or more brokers, and
1/1 on a single node. With producers on ``acks=all``, a write is acknowledged only once two
replicas have it, so one broker may die without losing an acknowledged event; with two down,
producers get ``NOT_ENOUGH_REPLICAS`` and keep their events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Durability:
    """Replication of a topic: how many copies, and how many must have a write before it is acknowledged."""

    replication_factor: int
    min_insync_replicas: int


def topic_durability(brokers: int) -> Durability:
    """RF 3 / min ISR 2 on three or more brokers; on fewer, every broker holds a copy and one suffices."""
    if brokers < 1:
        raise ValueError(f"a Kafka cluster has at least one broker, not {brokers}")
    if brokers >= 3:
        return Durability(3, 2)
    return Durability(brokers, 1)


def _admin(bootstrap: str, **client: Any) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="edgewatch-stack-admin", **client)


def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 1, *, brokers: int | None = None, **client: Any) -> None:
    """Create topics that do not exist yet, replicated per :func:`topic_durability`; existing ones are left alone.

    ``brokers``: the size of the cluster; None asks the cluster how many brokers it has now (so on a
    cluster with a broker down, pass it). ``client``: extra kafka-python client settings, such as
    :func:`edge.kafka_security.client_kwargs`."""
    from kafka.errors import TopicAlreadyExistsError

    admin = _admin(bootstrap, **client)
    try:
        d = topic_durability(brokers or len(admin.describe_cluster()["brokers"]))
        spec = {"num_partitions": partitions, "replication_factor": d.replication_factor,
                "configs": {"min.insync.replicas": str(d.min_insync_replicas)}}
        existing = set(admin.list_topics())
        missing = {n: spec for n in names if n not in existing}
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def quorum_leader(bootstrap: str, timeout_s: float = 5.0) -> int | None:
    """The node id leading the KRaft controller quorum (DescribeQuorum through any live broker), or
    None when no broker answers within ``timeout_s``."""
    from kafka.errors import KafkaError

    try:
        admin = _admin(bootstrap, request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError:
        return None
    try:
        quorum = admin.describe_metadata_quorum()
        leader = int(quorum["topics"][0]["partitions"][0]["leader_id"])
        return leader if leader >= 0 else None
    except KafkaError:
        return None
    finally:
        admin.close()


def _partitions(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions as the cluster describes them now (``partition_index``, ``leader_id``, ``isr_nodes``, ...)."""
    admin = _admin(bootstrap)
    try:
        (described,) = admin.describe_topics([topic])
        return list(described["partitions"])
    finally:
        admin.close()


def partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition number -> id of the broker leading it now (-1 while it has none)."""
    return {int(p["partition_index"]): int(p["leader_id"]) for p in _partitions(bootstrap, topic)}


def in_sync_replicas(bootstrap: str, topic: str) -> dict[int, set[int]]:
    """Partition number -> ids of the brokers in its in-sync set now."""
    return {int(p["partition_index"]): {int(n) for n in p["isr_nodes"]} for p in _partitions(bootstrap, topic)}
