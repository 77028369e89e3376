"""Round trips through the real local brokers: Mosquitto QoS 1 and Kafka acks=all in a group."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaProducer

from edge.contract import Reading, decode_readings, encode_readings, readings_subscription, readings_topic
from tests.kafka_util import consume


def test_mqtt_qos1_publish_subscribe_round_trip(mqtt_port: int, unique: str) -> None:
    prefix = f"test-{unique}"
    sent = [Reading(f"dev-{i % 3}", 1_700_000_000.0 + i, {"a": float(i), "b": -i / 7}) for i in range(30)]
    got: list[Reading] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        assert msg.qos == 1
        got.extend(decode_readings(msg.payload))
        if len(got) >= len(sent):
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{unique}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", mqtt_port)
    sub.subscribe(readings_subscription(prefix), qos=1)
    sub.loop_start()
    assert subscribed.wait(10)

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{unique}")
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    for r in sent:
        info = pub.publish(readings_topic(r.device_id, prefix), encode_readings([r]), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    assert done.wait(10), f"received {len(got)} of {len(sent)}"
    pub.loop_stop()
    sub.loop_stop()
    pub.disconnect()
    sub.disconnect()
    assert sorted(got, key=lambda r: r.ts) == sent


@pytest.mark.parametrize("count", [200])
def test_kafka_produce_acks_all_consume_in_group(kafka_bootstrap: str, kafka_topic: str, group_id: str,
                                                 count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    futures = [producer.send(kafka_topic, key=b"dev-1", value=f"m{i}".encode()) for i in range(count)]
    producer.flush(30)
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close()
    assert offsets == list(range(count))

    values = consume(kafka_bootstrap, kafka_topic, group_id, count)
    assert values == [f"m{i}".encode() for i in range(count)]
    # the group committed: a second consumer in the same group sees nothing new
    assert consume(kafka_bootstrap, kafka_topic, group_id, 1, timeout_s=5) == []


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may give the same free port to two binds in a row (it made a Kafka node's two
    listeners share one port and the node refuse to start): free_port skips a port it handed out."""
    import localdev.service as service

    given = iter([41001, 41001, 41001, 41002])

    class FakeSocket:
        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(given)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    class FakeSocketModule:  # only this module's name is replaced: nothing else in the process sees it
        socket = FakeSocket

    monkeypatch.setattr(service, "_HANDED_OUT", set())
    monkeypatch.setattr(service, "socket", FakeSocketModule)
    assert [service.free_port(), service.free_port()] == [41001, 41002]
