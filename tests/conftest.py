"""Shared fixtures: one real local stack (Mosquitto + Kafka) per test session, on free
loopback ports, a three-node Kafka cluster for the tests that need one, and a unique topic and
consumer group per test.

A missing broker binary skips broker tests locally with the reason; under ``CI=true`` it is a
failure, so CI can never be green while testing nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev.stack import KafkaCluster, LocalStack, missing_tools
from tests.tools import unavailable


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three Kafka nodes in one KRaft quorum (replication factor 3, min.insync.replicas 2), started the
    first time a test asks for it and shared by the whole session; mark such tests ``cluster``.

    ``kafka_cluster.bootstrap`` lists every node; ``kafka_cluster.node(i)`` (i = 1..3) has ``stop()``,
    ``kill()`` (SIGKILL) and ``start()`` on the same ports and data. A node a test leaves down is
    started again after that test (:func:`_cluster_whole_again`)."""
    missing = missing_tools()
    if missing:
        unavailable("kafka cluster needs: " + ", ".join(missing))
    cluster = KafkaCluster(Path(tmp_path_factory.mktemp("kafka-cluster")), 3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def _cluster_whole_again(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the cluster, start the nodes it stopped or killed."""
    yield
    if "kafka_cluster" in request.fixturenames and not missing_tools():  # (without the tools it was skipped)
        request.getfixturevalue("kafka_cluster").start()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    missing = missing_tools()
    if missing:
        unavailable("local stack needs: " + ", ".join(missing))
    stack = LocalStack(Path(tmp_path_factory.mktemp("stack")))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture
def mqtt_port(local_stack: LocalStack) -> int:
    return local_stack.mqtt_port


@pytest.fixture
def kafka_bootstrap(local_stack: LocalStack) -> str:
    return local_stack.kafka_bootstrap


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and client names in one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, unique: str) -> str:
    """A fresh Kafka topic (created, 1 partition) for this test only."""
    from tests.kafka_util import create_topic

    name = f"test.{unique}"
    create_topic(kafka_bootstrap, name)
    return name


@pytest.fixture
def group_id(unique: str) -> str:
    return f"test-group-{unique}"
