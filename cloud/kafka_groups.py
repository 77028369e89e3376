"""Subscribing a kafka-python consumer group member so that its first join is its only one.

kafka-python 3.0.12 keeps a snapshot of the subscribed topics' partitions, taken when the consumer
is made (before ``subscribe``) and refreshed only by a metadata update. A member that joins with a
stale snapshot finds it changed by the metadata update that follows its first assignment and
rebalances at once; if that second JoinGroup completes while the member is between two polls, the
library drops the result (its join loop asks ``need_rejoin()``, which the leader's assignment
has just made false, and never collects the finished join): the member stays without partitions
and without heartbeats until it is closed. Taking the snapshot after ``subscribe`` and before the
first poll avoids the rebalance and with it the lost join.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kafka import ConsumerRebalanceListener, KafkaConsumer

log = logging.getLogger(__name__)


def subscribe(consumer: KafkaConsumer, topics: Sequence[str], listener: ConsumerRebalanceListener | None = None) -> None:
    """``consumer.subscribe(topics, listener=listener)``, then a blocking metadata fetch that brings the
    group's partition snapshot up to date before the first poll joins."""
    consumer.subscribe(list(topics), listener=listener)
    consumer.topics()  # a metadata update: the coordinator's listener now sees the subscription
    for topic in topics:
        if not consumer.partitions_for_topic(topic):
            log.warning("topic_without_partitions topic=%s; the group rebalances once they appear", topic)
