"""Kafka helpers for tests: create topics and read a topic to the end, against the real broker."""

from __future__ import annotations

import time

from kafka import KafkaConsumer

from cloud.kafka_groups import subscribe
from localdev.stack import create_topics


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    create_topics(bootstrap, [name], partitions)


def consume(bootstrap: str, topic: str, group_id: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    """Consume from the earliest offset in a consumer group until ``expected`` values arrive."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    subscribe(consumer, [topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        consumer.commit()
    finally:
        consumer.close()
    return values
