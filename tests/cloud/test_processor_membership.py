"""Processor members joining and leaving the group during a stream of anomaly events (issue 15).

Real ``edgewatch process`` processes share one PostgreSQL store; the group goes from 1 to 3 members
and then to 2, the last change by SIGKILL of a member that holds partitions, on a 6-partition
topic of the three-node cluster, while the stream is being produced. The store must end equal,
table by table in key order, to one member's run over the same events.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from kafka import KafkaProducer

from cloud.processor.backends import open_postgres, open_sqlite
from edge.contract import decode_alert
from localdev.stack import KafkaCluster
from tests.cloud.processor_streams import config, fleet_stream, write_config
from tests.cloud.test_processor_kafka import caught_up, dump, events_items, read_all, run_until, start_process, store_ready
from tests.kafka_util import create_topic
from tests.tools import wait_for

pytestmark = [pytest.mark.brokers, pytest.mark.cluster]
PARTITIONS = 6
_ASSIGNED = re.compile(r"partitions_assigned partitions=\[([0-9, ]*)\]")


def last_assignment(log: Path) -> set[int] | None:
    """The partitions a member's log says it was last assigned; None before its first assignment."""
    found = _ASSIGNED.findall(log.read_text())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else None


def shared_out(logs: list[Path]) -> bool:
    """Every member holds partitions and together they hold each of the topic's partitions once."""
    held = [last_assignment(p) for p in logs]
    if any(not h for h in held):
        return False
    union = [p for h in held for p in h or ()]
    return sorted(union) == list(range(PARTITIONS))


def stop_left_over(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill the members a failed test left running (their store processes exit with them)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


class Feeder:
    """Produces the stream in small paced slices on a thread, never past ``allow(n)``: the test decides how far
    the stream may run before each membership change, and events keep arriving while the group rebalances."""

    def __init__(self, bootstrap: str, topic: str, items: list[tuple[str | None, bytes | None]]) -> None:
        self.bootstrap, self.topic, self.items = bootstrap, topic, items
        self.limit = 0
        self.sent = 0
        self.cond = threading.Condition()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self.thread.start()

    def allow(self, n: int) -> None:
        with self.cond:
            self.limit = max(self.limit, n)
            self.cond.notify()

    def _run(self) -> None:
        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
            try:
                while self.sent < len(self.items):
                    with self.cond:
                        self.cond.wait_for(lambda: self.sent < self.limit)
                        end = min(self.limit, self.sent + 10)
                    for key, value in self.items[self.sent:end]:
                        producer.send(self.topic, key=key.encode() if key else None, value=value)
                    producer.flush(60)
                    self.sent = end
                    time.sleep(0.2)  # about 50 events/s: the stream outlasts each change
            finally:
                producer.close()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


@pytest.mark.slow
def test_members_joining_and_one_killed_mid_stream_leave_the_store_equal_to_a_single_member_run(
        kafka_cluster: KafkaCluster, unique: str, postgres_dsn: str, tmp_path: Path) -> None:
    bootstrap = kafka_cluster.bootstrap
    topic = f"anomalies.{unique}"
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    create_topic(bootstrap, topic + ".alerts")
    stream = fleet_stream(15, partitions=PARTITIONS, duration_s=2400)
    items = events_items(stream)
    group = f"members-{unique}"
    cfg_path = write_config(tmp_path / "pg.toml", bootstrap=bootstrap, topic=topic, group=group, backend="postgres",
                            dsn="set-by-environment")
    # small polls: every member has a backlog in flight when the group changes
    cfg_path.write_text(cfg_path.read_text().replace("max_poll_records = 200", "max_poll_records = 10"))
    logs = [tmp_path / f"member-{i}.log" for i in range(3)]
    with ExitStack() as cleanup:
        procs: list[subprocess.Popen[bytes]] = []
        cleanup.callback(stop_left_over, procs)
        store = open_postgres(postgres_dsn)
        cleanup.callback(store.close)
        procs.append(start_process(cfg_path, logs[0], postgres_dsn))
        wait_for(lambda: last_assignment(logs[0]) == set(range(PARTITIONS)) and store_ready(store), 120,
                 "the first member to own every partition")
        feeder = Feeder(bootstrap, topic, items)
        third = len(items) // 3
        feeder.allow(third)
        wait_for(lambda: store.count("events") >= third // 2, 60, "one member to store a sixth of the stream")

        # 1 -> 3: two members join while the first third is still being produced and consumed
        procs += [start_process(cfg_path, logs[1], postgres_dsn), start_process(cfg_path, logs[2], postgres_dsn)]
        feeder.allow(2 * third)
        wait_for(lambda: shared_out(logs), 120, "three members to share the partitions",
                 state=lambda: [last_assignment(p) for p in logs])
        stored_at_three = store.count("events")
        feeder.allow(2 * third + third // 2)
        wait_for(lambda: store.count("events") >= stored_at_three + 20, 60, "three members to store more of the stream")

        # 3 -> 2: SIGKILL a joined member that holds partitions, while the rest of the stream comes in
        victim = procs[2]
        held_by_victim = last_assignment(logs[2])
        assert held_by_victim
        feeder.allow(len(items))
        victim.kill()
        assert victim.wait(10) == -signal.SIGKILL
        stored_at_kill = store.count("events")
        # the survivors take the victim's partitions once its session times out
        wait_for(lambda: shared_out(logs[:2]), 120, "two members to share the partitions after the kill",
                 state=lambda: [last_assignment(p) for p in logs[:2]])
        feeder.thread.join(120)
        assert not feeder.thread.is_alive() and feeder.errors == []
        wait_for(lambda: store.count("events") == len(stream) and caught_up(bootstrap, group, topic)
                 and store.unpublished("alerts") == [], 180, "the two members to process the whole stream",
                 state=lambda: {"events": (store.count("events"), len(stream)), "caught_up": caught_up(bootstrap, group, topic),
                                "unpublished_alerts": len(store.unpublished("alerts"))})
        for p in procs[:2]:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(30) for p in procs[:2]] == [0, 0], "SIGTERM must drain and exit 0"
        assert stored_at_three < stored_at_kill < len(stream), "the changes must fall inside the stream"
        members = dump(store)
        published = [decode_alert(r.value) for r in read_all(bootstrap, f"{topic}.alerts", len(members["alerts"]))]
        assert {a.alert_id for a in published} == {r[0] for r in members["alerts"]}

        # the same events through one member, another group and store
        single_group = f"single-{unique}"
        single = open_sqlite(tmp_path / "single.db")
        single.migrate()
        run_until(config(tmp_path / "single.toml", bootstrap=bootstrap, topic=topic, group=single_group,
                         sqlite_path=tmp_path / "single.db"),
                  lambda: single.count("events") == len(stream) and caught_up(bootstrap, single_group, topic))
        one_member = dump(single)
        single.close()
        assert {"incident", "fleet_incident"} <= {r[1] for r in members["incidents"]}
        for table in ("events", "incidents", "alerts", "device_state"):
            assert members[table] == one_member[table], table
