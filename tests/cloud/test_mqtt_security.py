"""deploy/mosquitto/secure.conf on a real Mosquitto: TLS, passwords, client certificates and
the per-device ACL refuse what they should and let the rest through."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from localdev.stack import DEPLOY_DIR, Mosquitto, free_port
from tests.tls_util import Pki, make_pki

PASSWORDS = {"pump-1": "s3cret-1", "pump-2": "s3cret-2", "agent-gw1": "agent-pw", "registry": "reg-pw"}


class SecureMosquitto(Mosquitto):
    name = "mosquitto-secure"

    def __init__(self, state_dir: Path, pki: Pki) -> None:
        super().__init__(state_dir, free_port())
        self.pki = pki
        self.mtls_port = free_port()

    def config_lines(self, data_dir: Path) -> list[str]:
        passwords = self.state_dir / "passwords"
        passwords.write_text("")
        for user, password in PASSWORDS.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True)
        shutil.copy(DEPLOY_DIR / "mosquitto" / "acl", self.state_dir / "acl")
        text = (DEPLOY_DIR / "mosquitto" / "secure.conf").read_text().format(
            password_file=passwords, acl_file=self.state_dir / "acl", tls_port=self.port, mtls_port=self.mtls_port,
            bind_address="127.0.0.1", ca_file=self.pki.ca, cert_file=self.pki.server_cert, key_file=self.pki.server_key,
            data_dir=data_dir)
        return text.splitlines()


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, local_stack: object) -> Iterator[SecureMosquitto]:
    folder = tmp_path_factory.mktemp("secure-mqtt")
    broker = SecureMosquitto(folder, make_pki(folder / "pki"))
    broker.start()
    yield broker
    broker.stop()


def _client(broker: SecureMosquitto, user: str | None, password: str | None, *, cert: tuple[Path, Path] | None = None,
            port: int | None = None) -> tuple[mqtt.Client, mqtt.ReasonCode | None]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set(ca_certs=str(broker.pki.ca), certfile=str(cert[0]) if cert else None, keyfile=str(cert[1]) if cert else None)
    if user:
        client.username_pw_set(user, password)
    result: list[mqtt.ReasonCode] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: object, flags: object, reason: mqtt.ReasonCode, props: object) -> None:
        result.append(reason)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *a: done.set()
    try:
        client.connect("127.0.0.1", port or broker.port)
    except (ssl.SSLError, OSError):
        return client, None
    client.loop_start()
    done.wait(10)
    return client, (result[0] if result else None)


def _publish_reason(client: mqtt.Client, topic: str) -> int:
    reasons: list[int] = []
    acked = threading.Event()

    def on_publish(c: mqtt.Client, u: object, mid: int, reason: mqtt.ReasonCode, props: object) -> None:
        reasons.append(reason.value)
        acked.set()

    client.on_publish = on_publish
    client.publish(topic, b'{"schema":1,"ts":1,"values":{"a":1}}', qos=1)
    assert acked.wait(10)
    return reasons[0]


def test_anonymous_and_wrong_password_refused(secure_broker: SecureMosquitto) -> None:
    anon, reason = _client(secure_broker, None, None)
    assert reason is None or reason.is_failure
    wrong, reason = _client(secure_broker, "pump-1", "guess")
    assert reason is not None and reason.is_failure and reason.value in (0x86, 0x87)
    for c in (anon, wrong):
        c.loop_stop()


def test_plaintext_refused_on_tls_listener(secure_broker: SecureMosquitto) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.username_pw_set("pump-1", PASSWORDS["pump-1"])
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    try:
        client.connect("127.0.0.1", secure_broker.port, keepalive=5)
        client.loop_start()
        assert not connected.wait(3)
    except OSError:
        pass
    finally:
        client.loop_stop()


def test_device_acl_and_agent_reads(secure_broker: SecureMosquitto) -> None:
    agent, reason = _client(secure_broker, "agent-gw1", PASSWORDS["agent-gw1"])
    assert reason is not None and not reason.is_failure
    got: list[str] = []
    subscribed = threading.Event()
    agent.on_message = lambda c, u, msg: got.append(msg.topic)
    agent.on_subscribe = lambda *a: subscribed.set()
    agent.subscribe("edgewatch/+/readings", qos=1)
    assert subscribed.wait(10)

    device, reason = _client(secure_broker, "pump-1", PASSWORDS["pump-1"])
    assert reason is not None and not reason.is_failure
    assert _publish_reason(device, "edgewatch/pump-1/readings") == 0
    assert _publish_reason(device, "edgewatch/pump-2/readings") == 0x87  # not authorized: another device's topic
    assert _publish_reason(device, "edgewatch/models/default/announce") == 0x87
    deadline = threading.Event()
    for _ in range(50):
        if got:
            break
        deadline.wait(0.1)
    deadline.wait(0.5)
    assert got == ["edgewatch/pump-1/readings"]
    for c in (agent, device):
        c.disconnect()
        c.loop_stop()


def test_client_certificate_listener(secure_broker: SecureMosquitto) -> None:
    cert = secure_broker.pki.client("pump-2")
    device, reason = _client(secure_broker, None, None, cert=cert, port=secure_broker.mtls_port)
    assert reason is not None and not reason.is_failure
    assert _publish_reason(device, "edgewatch/pump-2/readings") < 0x80  # accepted (0x10: no subscribers); CN is the username
    assert _publish_reason(device, "edgewatch/pump-1/readings") == 0x87
    device.disconnect()
    device.loop_stop()
    nocert, reason = _client(secure_broker, "pump-2", PASSWORDS["pump-2"], port=secure_broker.mtls_port)
    assert reason is None or reason.is_failure
    nocert.loop_stop()


def test_agent_works_over_tls_with_password_while_the_acl_holds(secure_broker: SecureMosquitto, kafka_bootstrap: str,
                                                                 unique: str, tmp_path: Path) -> None:
    from edge.agent import Agent
    from edge.config import load_config
    from tests.edge.agent_util import fleet_readings, payloads, toml_config
    from tests.tools import wait_for

    topics = {k: f"{k}.{unique}" for k in ("anomalies", "telemetry", "deadletter")}
    path = toml_config(tmp_path, agent_id="agent-gw1", mqtt_port=secure_broker.port, kafka_bootstrap=kafka_bootstrap,
                       prefix="edgewatch", topics=topics)
    text = path.read_text().replace("[mqtt]\n", f'[mqtt]\nusername = "agent-gw1"\ntls_ca_file = "{secure_broker.pki.ca}"\n'
                                                f'client_id = "agent-gw1-{unique}"\n')
    path.write_text(text)
    agent = Agent(load_config(path, env={"EDGEWATCH_MQTT__PASSWORD": PASSWORDS["agent-gw1"]}))
    agent.start()
    try:
        wait_for(lambda: agent.registry.get_sample_value("edgewatch_agent_mqtt_connected") == 1.0, 20, "agent connected over TLS")
        device, reason = _client(secure_broker, "pump-1", PASSWORDS["pump-1"])
        assert reason is not None and not reason.is_failure
        own = payloads(fleet_readings("pump-1", 40, seed=1), batch=10)
        forged = payloads(fleet_readings("pump-2", 40, seed=2), batch=10)
        assert all(_publish_reason(device, t) < 0x80 for t, _ in own[:1])
        for topic, payload in own[1:]:
            device.publish(topic, payload, qos=1).wait_for_publish(10)
        assert all(_publish_reason(device, t) == 0x87 for t, _ in forged[:1])  # another device's topic: refused
        device.disconnect()
        device.loop_stop()
        # the probe publish carried a payload with a made-up channel (dead-lettered); then 30 real readings of pump-1,
        # and nothing of pump-2's forged ones
        wait_for(lambda: (agent.registry.get_sample_value("edgewatch_agent_readings_received_total") or 0) >= 30, 20,
                 "pump-1's readings at the agent")
        wait_for(lambda: (agent.registry.get_sample_value("edgewatch_agent_messages_received_total") or 0) >= 4, 10, "the probe")
        assert agent.registry.get_sample_value("edgewatch_agent_readings_received_total") == 30
        assert agent.registry.get_sample_value("edgewatch_agent_messages_received_total") == 4
    finally:
        agent.stop()
