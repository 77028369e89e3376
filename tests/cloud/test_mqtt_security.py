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

from cloud.stack import DEPLOY_DIR, Mosquitto, free_port
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
