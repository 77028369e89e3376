"""MQTT intake: a paho-mqtt 2.x client whose network thread only enqueues.

QoS 1 subscription on ``<prefix>/+/readings``, a persistent session (MQTT 3.1.1,
``clean_session=False``, a fixed client id) so the broker keeps QoS 1 messages for the agent
while it is away, and paho's automatic reconnect with capped exponential backoff.

``on_message`` runs on paho's network thread and must not hold it long: it appends
``(topic, payload, received_at)`` to an :class:`IntakeQueue` and returns; only when the queue is
full does it wait, at most ``agent.queue_wait_s`` (well under the keepalive), for the worker to
make room, and meanwhile the broker keeps what it has not sent. Decoding happens on the agent's
worker thread. paho acknowledges a QoS 1 message when ``on_message`` returns, so a message
dropped by the queue's overflow policy (``agent.queue_max_messages``, ``agent.queue_max_bytes``,
after that wait), or still queued at a crash, is lost to the agent; drops are counted.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttSection
from edge.contract import readings_subscription

log = logging.getLogger(__name__)


class Message(NamedTuple):
    topic: str
    payload: bytes
    received_at: float


class IntakeQueue:
    """A FIFO between paho's thread (:meth:`put`) and the worker (:meth:`get_batch`), bounded in
    messages and in payload bytes.

    When a new message would exceed either bound, :meth:`put` first waits up to ``wait_s`` for
    the worker to make room (backpressure: paho's thread stops reading, so the broker keeps the
    backlog, not this process); then ``drop_newest`` refuses it and ``drop_oldest`` evicts the
    oldest messages until it fits. A message alone in the queue is always taken (payloads are
    bounded by the broker and refused later if over ``agent.max_payload_bytes``). :meth:`put`
    wakes a waiting :meth:`get_batch` only when the queue turns non-empty, holds what that call
    asked for, or is full, not once per message.
    """

    def __init__(self, max_messages: int, policy: Literal["drop_newest", "drop_oldest"], max_bytes: int,
                 wait_s: float = 0.0) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy
        self.wait_s = wait_s
        self.dropped = 0
        self._bytes = 0
        self._items: collections.deque[Message] = collections.deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the worker waits for messages
        self._room = threading.Condition(lock)  # paho's thread waits for room
        self._full = False  # a put is waiting for room: the worker takes a round at once
        self._wake_at = 1  # queue length at which put() notifies the waiting get_batch
        self._first_at = 0.0  # time.monotonic() when the queue last turned non-empty

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """Payload bytes queued."""
        return self._bytes

    def put(self, item: Message) -> int:
        """Enqueue, after waiting up to ``wait_s`` for room if the queue is full; returns how many
        messages the overflow policy dropped (this one or older ones)."""
        size = len(item.payload)
        with self._cond:
            if self.wait_s > 0 and not self._fits(size):
                deadline = time.monotonic() + self.wait_s
                self._full = True
                self._cond.notify()
                try:
                    while not self._fits(size) and (left := deadline - time.monotonic()) > 0:
                        self._room.wait(left)
                finally:
                    self._full = False
            dropped = 0
            while not self._fits(size):
                dropped += 1
                if self.policy == "drop_newest":
                    self.dropped += 1
                    return 1
                self._bytes -= len(self._items.popleft().payload)
            self.dropped += dropped
            if not self._items:
                self._first_at = time.monotonic()
            self._items.append(item)
            self._bytes += size
            if len(self._items) >= self._wake_at or len(self._items) == 1:
                self._cond.notify()
            return dropped

    def wake(self) -> None:
        """End a :meth:`get_batch` waiting for a first message now (the agent is stopping)."""
        with self._cond:
            self._cond.notify()

    def _fits(self, size: int) -> bool:
        return not self._items or (len(self._items) < self.max_messages and self._bytes + size <= self.max_bytes)

    def get_batch(self, max_items: int, timeout_s: float, *, linger_s: float = 0.0,
                  max_bytes: int | None = None) -> list[Message]:
        """Up to ``max_items`` messages and, past the first, ``max_bytes`` payload bytes.

        Waits at most ``timeout_s`` for the first message; then, unless ``max_items`` are
        already queued, until the oldest queued message has waited ``linger_s``, so that messages
        arriving together are taken together (a micro-batch). Called by one consumer thread.
        """
        with self._cond:
            if not self._items and timeout_s > 0:
                self._cond.wait(timeout_s)
            if self._items and linger_s > 0:
                self._wake_at = max_items
                try:
                    while len(self._items) < max_items and not self._full:
                        left = self._first_at + linger_s - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                finally:
                    self._wake_at = 1
            n = min(max_items, len(self._items))
            out: list[Message] = []
            taken = 0
            for _ in range(n):
                if max_bytes is not None and out and taken + len(self._items[0].payload) > max_bytes:
                    break
                msg = self._items.popleft()
                taken += len(msg.payload)
                out.append(msg)
            self._bytes -= taken
            if out:
                self._room.notify()
            return out


class MqttIntake:
    """Owns the paho client. :meth:`start` returns at once; connecting and reconnecting happen
    on paho's thread, so a broker that is down at start is not an error."""

    def __init__(self, cfg: MqttSection, queue: IntakeQueue, *, clock: Callable[[], float] = time.time,
                 on_connection: Callable[[bool], None] | None = None, on_drop: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        self.queue = queue
        self.subscription = readings_subscription(cfg.topic_prefix)
        self._clock = clock
        self._on_connection = on_connection or (lambda _up: None)
        self._on_drop = on_drop or (lambda _n: None)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password or None)
        if self.cfg.tls_ca_file:
            client.tls_set(ca_certs=self.cfg.tls_ca_file)
        client.reconnect_delay_set(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)  # type: ignore[arg-type]  # paho annotates int; any seconds work
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_subscribe = self.on_subscribe
        client.on_message = self.on_message
        client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        client.loop_start()
        self._client = client
        log.info("mqtt_starting host=%s port=%d client_id=%s subscription=%s", self.cfg.host, self.cfg.port,
                 self.cfg.client_id, self.subscription)

    def stop(self) -> None:
        """Disconnect (the session stays on the broker) and join paho's thread."""
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self.connected.clear()
        self._on_connection(False)
        log.info("mqtt_stopped client_id=%s", self.cfg.client_id)

    # paho callbacks: paho's network thread; none of them blocks.
    def on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt_connect_refused host=%s port=%d reason=%s", self.cfg.host, self.cfg.port, reason)
            return
        log.info("mqtt_connected host=%s port=%d session_present=%s", self.cfg.host, self.cfg.port, flags.session_present)
        client.subscribe(self.subscription, qos=1)
        self.connected.set()
        self._on_connection(True)

    def on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("mqtt_subscribe_refused subscription=%s reasons=%s", self.subscription, reasons)
            return
        self.subscribed.set()

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._on_connection(False)
        log.warning("mqtt_disconnected host=%s port=%d reason=%s", self.cfg.host, self.cfg.port, reason)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        dropped = self.queue.put(Message(msg.topic, bytes(msg.payload), self._clock()))
        if dropped:
            self._on_drop(dropped)
