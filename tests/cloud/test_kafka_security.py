"""Kafka over TLS on a real broker (localdev/stack_secure.py: SASL_SSL with SCRAM-SHA-512, and mutual
TLS): the agent's forwarder delivers, a wrong password, a missing CA and a missing client
certificate are refused with a reason within the bootstrap timeout, and the processor and the
archive consume what the agent sent. The broker runs the StandardAuthorizer: each test grants its
users the ACLs of their role (cloud/kafka_acls.py) on its own topics and groups, and an agent may
neither read the anomalies nor write alerts. Plus the processor's and the retraining trigger's config keys.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from cloud.cli import main as cli_main
from cloud.kafka_acls import Resources, grants, plan
from cloud.processor.archive import run_archive
from cloud.processor.backends import open_sqlite
from cloud.processor.config import ProcessorConfig
from cloud.processor.config import load_config as load_processor_config
from cloud.retrain.config import load_retrain_config
from edge.config import Config, load_config
from edge.contract import BrokerUnavailable, ConfigError, encode_event
from edge.forwarder import Forwarder
from edge.kafka_security import KafkaSecurity, client_kwargs
from edge.metrics import AgentMetrics
from edge.outbox import Outbox, Record
from localdev.stack import create_topics, missing_tools
from localdev.stack_secure import ADMIN_USER, SecureKafka
from tests.cloud.processor_streams import event, in_thread, write_config
from tests.cloud.test_processor_archive import windows
from tests.tls_util import Pki, make_pki
from tests.tools import unavailable, wait_for

PASSWORDS = {"agent-gw1": "agent-pw-1", "processor": "processor-pw-1"}
BOOTSTRAP_TIMEOUT_MS = 3000


class Secure:
    def __init__(self, kafka: SecureKafka, pki: Pki) -> None:
        self.kafka, self.pki = kafka, pki

    def sasl(self, user: str, password: str | None = None) -> dict[str, Any]:
        if user == ADMIN_USER:
            return client_kwargs(self.kafka.admin)
        return client_kwargs(KafkaSecurity("SASL_SSL", ssl_cafile=str(self.pki.ca), sasl_mechanism="SCRAM-SHA-512", username=user,
                                           password=password or PASSWORDS[user]))

    def allow(self, res: Resources) -> None:
        """The agent's and the processor's ACLs on ``res``'s topics and groups."""
        self.kafka.grant(plan([("agent", "agent-gw1"), ("processor", "processor")], res))

    def read(self, topic: str, expected: int, timeout_s: float = 30.0, user: str = "processor") -> list[bytes]:
        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                                 **self.sasl(user))
        try:
            consumer.assign([TopicPartition(topic, 0)])
            values: list[bytes] = []
            deadline = time.monotonic() + timeout_s
            while len(values) < expected and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    values.extend(r.value for r in records)
            return values
        finally:
            consumer.close()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    missing = [m for m in missing_tools() if not m.startswith("mosquitto")]
    if missing:
        unavailable("secure Kafka needs: " + ", ".join(missing))
    folder = tmp_path_factory.mktemp("secure-kafka")
    pki = make_pki(folder / "pki")
    kafka = SecureKafka(folder, ca_file=pki.ca, cert_file=pki.server_cert, key_file=pki.server_key, users=PASSWORDS)
    kafka.start()
    yield Secure(kafka, pki)
    kafka.stop()


def agent_config(tmp_path: Path, bootstrap: str, lines: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nid = "gw-1"\n[kafka]\nbootstrap = "{bootstrap}"\nbootstrap_timeout_ms = {BOOTSTRAP_TIMEOUT_MS}\n'
                    f"request_timeout_ms = {BOOTSTRAP_TIMEOUT_MS}\nbackoff_max_s = 1.0\n{lines}")
    return load_config(path, env=env or {})


def sasl_lines(ca: str) -> str:
    return f'security_protocol = "SASL_SSL"\nssl_cafile = "{ca}"\nsasl_mechanism = "SCRAM-SHA-512"\nusername = "agent-gw1"\n'


def forward(cfg: Config, tmp_path: Path, values: list[bytes], topic: str, name: str = "outbox") -> tuple[Forwarder, Outbox]:
    box = Outbox(tmp_path / f"{name}.sqlite", max_bytes=1 << 20)
    box.append([Record("anomaly", topic, b"pump-1", v) for v in values])
    return Forwarder(box, cfg.kafka, AgentMetrics(CollectorRegistry())), box


def refused(fwd: Forwarder, box: Outbox) -> str:
    """One forwarder round against a broker that must refuse it: the reason, raised within the bound."""
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as err:
        fwd.drain_once()
    assert time.monotonic() - started < BOOTSTRAP_TIMEOUT_MS / 1000 + 5, "the refusal must not hang"
    assert box.rows == 1  # nothing lost: retried by the next round
    return str(err.value)


@pytest.mark.brokers
def test_agent_forwarder_delivers_over_sasl_ssl_with_scram(secure: Secure, tmp_path: Path, unique: str) -> None:
    topic = f"secure.{unique}"
    secure.allow(Resources(anomalies_topic=topic))
    create_topics(secure.kafka.bootstrap, [topic], **secure.sasl("agent-gw1"))  # agents may create their topics
    shutil.copy(secure.pki.ca, tmp_path / "ca.crt")  # relative to the config file
    cfg = agent_config(tmp_path, secure.kafka.bootstrap, sasl_lines("ca.crt"), {"EDGEWATCH_KAFKA__PASSWORD": PASSWORDS["agent-gw1"]})
    values = [encode_event(event("pump-1", 1_764_230_400.0 + i)) for i in range(3)]
    fwd, box = forward(cfg, tmp_path, values, topic)
    try:
        assert fwd.drain_once() == 3 and box.rows == 0
    finally:
        fwd._close_producer()
    assert secure.read(topic, 3) == values


@pytest.mark.brokers
def test_wrong_password_is_refused_with_the_reason(secure: Secure, tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, secure.kafka.bootstrap, sasl_lines(str(secure.pki.ca)), {"EDGEWATCH_KAFKA__PASSWORD": "wrong"})
    fwd, box = forward(cfg, tmp_path, [b"x"], "secure.never")
    text = refused(fwd, box)
    assert "SASL SCRAM-SHA-512 login of 'kafka.username' = 'agent-gw1'" in text and "kafka.password" in text


@pytest.mark.brokers
def test_a_client_without_the_ca_does_not_trust_the_broker(secure: Secure, tmp_path: Path) -> None:
    lines = 'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nusername = "agent-gw1"\n'  # system CAs only
    cfg = agent_config(tmp_path, secure.kafka.bootstrap, lines, {"EDGEWATCH_KAFKA__PASSWORD": PASSWORDS["agent-gw1"]})
    fwd, box = forward(cfg, tmp_path, [b"x"], "secure.never")
    assert "certificate is not trusted (unable to get local issuer certificate)" in refused(fwd, box)


@pytest.mark.brokers
def test_mutual_tls_needs_the_client_certificate(secure: Secure, tmp_path: Path, unique: str) -> None:
    topic = f"secure.mtls.{unique}"
    secure.allow(Resources(anomalies_topic=topic))  # the certificate's CN=agent-gw1 is User:agent-gw1
    cert, key = secure.pki.client("agent-gw1")
    with_cert = f'security_protocol = "SSL"\nssl_cafile = "{secure.pki.ca}"\nssl_certfile = "{cert}"\nssl_keyfile = "{key}"\n'
    fwd, box = forward(agent_config(tmp_path, secure.kafka.mtls_bootstrap, with_cert), tmp_path, [b"signed"], topic)
    try:
        assert fwd.drain_once() == 1
    finally:
        fwd._close_producer()
    assert secure.read(topic, 1) == [b"signed"]
    without = f'security_protocol = "SSL"\nssl_cafile = "{secure.pki.ca}"\n'
    fwd, box = forward(agent_config(tmp_path, secure.kafka.mtls_bootstrap, without), tmp_path, [b"anonymous"], topic, "outbox2")
    assert "needs 'kafka.ssl_certfile'" in refused(fwd, box)


@pytest.mark.brokers
def test_agent_credentials_cannot_read_the_anomalies(secure: Secure, unique: str) -> None:
    res = Resources(anomalies_topic=f"acl.anomalies.{unique}", processor_group=f"g-{unique}")
    secure.allow(res)
    create_topics(secure.kafka.bootstrap, [res.anomalies_topic], **secure.sasl(ADMIN_USER))
    with pytest.raises(GroupAuthorizationFailedError, match=res.processor_group):
        poll_once(secure, res.anomalies_topic, "agent-gw1", group=res.processor_group)
    with pytest.raises(TopicAuthorizationFailedError, match=res.anomalies_topic):
        poll_once(secure, res.anomalies_topic, "agent-gw1", group=None)  # no group: the fetch itself is refused


def poll_once(secure: Secure, topic: str, user: str, group: str | None) -> None:
    consumer = KafkaConsumer(topic, bootstrap_servers=secure.kafka.bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, **secure.sasl(user))
    try:
        consumer.poll(timeout_ms=10_000)
    finally:
        consumer.close()


@pytest.mark.brokers
def test_a_write_the_acls_refuse_leaves_the_agent_outbox_intact(secure: Secure, tmp_path: Path, unique: str) -> None:
    res = Resources(anomalies_topic=f"acl.anomalies.{unique}", alerts_topic=f"acl.alerts.{unique}")
    secure.allow(res)
    create_topics(secure.kafka.bootstrap, [res.anomalies_topic, res.alerts_topic], **secure.sasl(ADMIN_USER))
    env = {"EDGEWATCH_KAFKA__PASSWORD": PASSWORDS["agent-gw1"]}
    cfg = agent_config(tmp_path, secure.kafka.bootstrap, sasl_lines(str(secure.pki.ca)), env)
    fwd, box = forward(cfg, tmp_path, [b"forged alert"], res.alerts_topic)
    try:
        text = refused(fwd, box)
    finally:
        fwd._close_producer()
    assert f"user 'agent-gw1' may not write to topic '{res.alerts_topic}' (TopicAuthorizationFailedError)" in text
    # in a batch, the refused row waits and the rows around it are delivered
    fwd, box = forward(cfg, tmp_path, [b"a1"], res.anomalies_topic, "outbox2")
    box.append([Record("anomaly", res.alerts_topic, b"pump-1", b"forged"), Record("anomaly", res.anomalies_topic, b"pump-1", b"a2")])
    try:
        with pytest.raises(BrokerUnavailable, match="may not write"):
            fwd.drain_once()
    finally:
        fwd._close_producer()
    assert [(r.topic, r.value) for r in box.peek(10)] == [(res.alerts_topic, b"forged")]
    assert secure.read(res.anomalies_topic, 2) == [b"a1", b"a2"]


@pytest.mark.brokers
def test_processor_and_archive_consume_what_the_agent_sent_over_sasl_ssl(secure: Secure, tmp_path: Path, unique: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With the ACLs of their roles only, granted by `edgewatch acls` from the processor's config: the agent
    writes, the processor consumes in its group and commits, dead-letters a malformed event and writes
    alerts; the archive consumes the telemetry in its group."""
    topic = f"anomalies.{unique}"
    db, archive_dir = tmp_path / "store.db", tmp_path / "archive"
    cfg = processor_config(secure, tmp_path, topic, unique, db, archive_dir)
    admin = secure.kafka.admin
    for key, value in (("SECURITY_PROTOCOL", "SASL_SSL"), ("SSL_CAFILE", admin.ssl_cafile), ("SASL_MECHANISM", admin.sasl_mechanism),
                       ("USERNAME", admin.username), ("PASSWORD", admin.password)):
        monkeypatch.setenv(f"EDGEWATCH_KAFKA__{key}", value)
    assert cli_main(["acls", "--config", str(tmp_path / "cloud.toml"), "--agents", "agent-gw1", "--processors", "processor"]) == 0
    create_topics(secure.kafka.bootstrap, [topic, f"{topic}.alerts", f"{topic}.deadletter", f"{topic}.telemetry"],
                  **secure.sasl(ADMIN_USER))
    agent = agent_config(tmp_path, secure.kafka.bootstrap, sasl_lines(str(secure.pki.ca)),
                         {"EDGEWATCH_KAFKA__PASSWORD": PASSWORDS["agent-gw1"]})
    events = [event(f"pump-{i % 2}", 1_764_230_400.0 + 10 * i) for i in range(12)]  # an incident per pump
    fwd, box = forward(agent, tmp_path, [encode_event(e) for e in events] + [b"not an event"], topic)
    box.append([Record("telemetry", f"{topic}.telemetry", b"pump-0", w) for w in windows(4)])
    try:
        assert fwd.drain_once() + fwd.drain_once() == 17
    finally:
        fwd._close_producer()
    store = open_sqlite(db)
    store.migrate()
    thread, stop, errors = in_thread(cfg)
    archive = threading.Thread(target=run_archive, args=(cfg, stop, CollectorRegistry()), daemon=True)
    archive.start()
    try:
        wait_for(lambda: store.count("events") == 12 or bool(errors) or not archive.is_alive(), 60, "the processor to store the events")
        wait_for(lambda: archived(archive_dir) == 4 or not archive.is_alive(), 60, "the archive to write the 4 windows")
        wait_for(lambda: committed(secure, cfg) == 13 or bool(errors), 60, "the processor to commit the 13 records")
        wait_for(lambda: (store.count("alerts") > 0 and not store.unpublished("alerts")) or bool(errors), 60, "alerts published",
                 state=lambda: store.count("alerts"))
        alerts = store.count("alerts")
    finally:
        stop.set()
        thread.join(30)
        archive.join(30)
        store.close()
    assert not errors and not thread.is_alive() and not archive.is_alive()
    assert store_count(db) == 12 and archived(archive_dir) == 4
    assert len(secure.read(f"{topic}.deadletter", 1, user=ADMIN_USER)) == 1
    assert len(secure.read(f"{topic}.alerts", alerts, user=ADMIN_USER)) == alerts


def processor_config(secure: Secure, tmp_path: Path, topic: str, unique: str, db: Path, archive_dir: Path) -> ProcessorConfig:
    path = write_config(tmp_path / "cloud.toml", bootstrap=secure.kafka.bootstrap, topic=topic, group=f"g-{unique}", sqlite_path=db,
                        extra=f'[archive]\nenabled = true\ndir = "{archive_dir}"\ngroup_id = "arch-{unique}"\nflush_rows = 4\n')
    cfg = load_processor_config(path, env={  # the environment twins, as a systemd EnvironmentFile would set them
        "EDGEWATCH_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "EDGEWATCH_KAFKA__SSL_CAFILE": str(secure.pki.ca),
        "EDGEWATCH_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512", "EDGEWATCH_KAFKA__USERNAME": "processor",
        "EDGEWATCH_KAFKA__PASSWORD": PASSWORDS["processor"]})
    assert cfg.masked()["kafka"]["password"] == "***"
    return cfg


def committed(secure: Secure, cfg: ProcessorConfig) -> int | None:
    """The processor group's committed offset of the anomalies partition, asked with the processor's credentials."""
    consumer = KafkaConsumer(bootstrap_servers=secure.kafka.bootstrap, group_id=cfg.kafka.group_id, enable_auto_commit=False,
                             **secure.sasl("processor"))
    try:
        offset: int | None = consumer.committed(TopicPartition(cfg.kafka.anomalies_topic, 0))
        return offset
    finally:
        consumer.close()


def store_count(db: Path) -> int:
    store = open_sqlite(db)
    try:
        return store.count("events")
    finally:
        store.close()


def archived(folder: Path) -> int:
    files = list(folder.glob("device_id=*/date=*/*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in files)


def test_processor_and_trigger_configs_check_their_kafka_security(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text('[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "ca.pem"\n')
    with pytest.raises(ConfigError, match=r"'kafka.ssl_cafile' = 'ca.pem': no such file"):
        load_processor_config(path, env={})
    (tmp_path / "ca.pem").write_text("x")
    assert load_processor_config(path, env={}).kafka.ssl_cafile == str(tmp_path / "ca.pem")
    path.write_text('[kafka]\nsecurity_protocol = "SASL_SSL"\nusername = "p"\npassword = "in-file"\n')
    with pytest.raises(ConfigError, match="'kafka.password' is a secret"):
        load_processor_config(path, env={})
    retrain = tmp_path / "retrain.toml"
    retrain.write_text('[trigger]\nsecurity_protocol = "SASL_SSL"\nssl_cafile = "ca.pem"\nusername = "retrain"\n')
    with pytest.raises(ConfigError, match="EDGEWATCH_TRIGGER__PASSWORD"):
        load_retrain_config(retrain, env={})
    trigger = load_retrain_config(retrain, env={"EDGEWATCH_TRIGGER__PASSWORD": "pw"}).trigger
    assert client_kwargs(trigger)["ssl_cafile"] == str(tmp_path / "ca.pem") and client_kwargs(trigger)["sasl_plain_password"] == "pw"


def test_acl_roles_name_only_their_topics_and_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = Resources()
    agent = grants("agent", "agent-gw1", res)
    assert {g.kind for g in agent} == {"topic"} and {g.principal for g in agent} == {"User:agent-gw1"}
    produced = {res.anomalies_topic, res.telemetry_topic, res.status_topic, res.deadletter_topic, res.escalations_topic}
    assert {(g.operation, g.name) for g in agent} == {(op, t) for t in produced for op in ("Write", "Describe", "Create")}
    processor = grants("processor", "User:processor", res)
    assert {g.name for g in processor if g.operation == "Write"} == {res.alerts_topic, res.deadletter_topic}
    assert {g.name for g in processor if g.operation == "Read"} == {res.anomalies_topic, res.telemetry_topic, res.status_topic,
                                                                    res.escalations_topic, res.processor_group, res.archive_group,
                                                                    res.escalation_group}
    assert {(g.operation, g.kind, g.name) for g in grants("retrain", "retrain", res)} == {
        ("Read", "topic", res.alerts_topic), ("Describe", "topic", res.alerts_topic), ("Read", "group", res.retrain_group)}
    with pytest.raises(ConfigError, match="without wildcards"):
        grants("agent", "*", res)
    path = tmp_path / "cloud.toml"
    path.write_text('[kafka]\nanomalies_topic = "plant.anomalies"\ngroup_id = "plant-processor"\n')
    assert cli_main(["acls", "--config", str(path), "--agents", "gw-1,gw-2", "--processors", "proc", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "allow User:gw-2 Write on topic plant.anomalies" in out and "allow User:proc Read on group plant-processor" in out
    assert "47 ACLs to create" in out  # 15 for each agent, 17 for the processor
