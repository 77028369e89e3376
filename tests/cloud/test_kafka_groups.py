"""Joining a consumer group on the real local Kafka: the processor's (and the archive's) consumer gets
every partition in its first assignment and keeps it, with no second rebalance right after joining.

That second rebalance is what kafka-python 3.0.12 can lose (see :mod:`cloud.kafka_groups`): the member
then holds no partition for good. Subscribing before the group's snapshot is taken makes it happen
in most joins, so this test fails without the fix.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kafka import ConsumerRebalanceListener

from cloud.processor.config import ProcessorKafkaSection
from cloud.processor.consumer import group_consumer
from tests.kafka_util import create_topic

pytestmark = pytest.mark.brokers


class Recorder(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.calls.append(("revoked", sorted(tp.partition for tp in revoked)))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.calls.append(("assigned", sorted(tp.partition for tp in assigned)))


@pytest.mark.parametrize("attempt", range(3))
def test_a_new_member_joins_once_with_every_partition(kafka_bootstrap: str, unique: str, attempt: int) -> None:
    topic = f"join.{unique}"
    create_topic(kafka_bootstrap, topic, partitions=4)
    recorder = Recorder()
    consumer = group_consumer(ProcessorKafkaSection(bootstrap=kafka_bootstrap, session_timeout_s=10.0), topic, recorder,
                              group_id=f"join-{unique}", client_id=f"join-{unique}")
    try:
        deadline = time.monotonic() + 3.0  # the metadata refresh that follows the leader's assignment lands well inside this
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert sorted(tp.partition for tp in consumer.assignment()) == [0, 1, 2, 3]
        assert [c for c in recorder.calls if c[1]] == [("assigned", [0, 1, 2, 3])], recorder.calls
    finally:
        consumer.close(autocommit=False)
