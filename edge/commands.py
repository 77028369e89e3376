"""Operator commands on the device: a signed ``new_normal`` over MQTT rebaselines one device.

``edgewatch incidents label ID --new-normal`` publishes a :class:`~edge.contract.command.DeviceCommand`
on ``<prefix>/commands/<agent_id>`` (QoS 1, not retained). The agent takes commands when model
updates are on (``[updates] enabled``), with the same trusted keys (``updates.trusted_keys_dir``).

Threads: :class:`CommandReceiver` has its own MQTT session (client id ``<mqtt.client_id>-commands``,
persistent, so a command sent while the agent is away arrives when it reconnects). paho's network
thread decodes and checks each command (:meth:`CommandReceiver.on_payload`) and queues an accepted
one; it never touches the pipeline. The agent's worker thread takes queued commands between two
batches (:meth:`CommandReceiver.poll`) and calls ``rebaseline(device_id)``
(:meth:`edge.pipeline.Pipeline.rebaseline`), then reports ``rebaselined``.

A command is refused, changes nothing and is reported ``command_refused`` with a reason label
(:data:`REFUSALS`, counted in :attr:`CommandReceiver.refused`) when it is malformed, unsigned,
signed by a key the agent does not trust or not by the key it names, addressed to another
agent, issued more than ``updates.command_max_age_s`` ago or more than
``windows.max_clock_skew_s`` ahead of the agent's clock, already taken (its ``command_id`` is among
the last :data:`REMEMBERED` taken), when the queue to the worker is full, or when the adaptive
layer is off.

Not guaranteed: the ids taken are remembered in memory only, so after a restart a command younger
than ``command_max_age_s`` would be taken again (one more warm-up of the same device). A command
for a device this agent does not hold still starts that device's warm-up when it appears.
"""

from __future__ import annotations

import base64
import binascii
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidSignature
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttSection
from edge.contract import ContractError, EdgewatchError, ModelManifest
from edge.contract.command import DeviceCommand, command_bytes, command_topic, decode_command
from edge.contract.update import ModelStatus, StatusAction
from edge.signing import TrustedKeys

log = logging.getLogger(__name__)

Refusal = Literal["malformed", "unsigned", "unknown_key", "bad_signature", "wrong_agent", "stale", "future", "replayed",
                  "busy", "adaptive_off"]
REFUSALS: tuple[Refusal, ...] = ("malformed", "unsigned", "unknown_key", "bad_signature", "wrong_agent", "stale", "future",
                                 "replayed", "busy", "adaptive_off")
REMEMBERED = 4096  # command ids taken, newest kept: replays inside command_max_age_s are refused
MAX_QUEUED = 64    # accepted commands waiting for the worker


class CommandRefused(EdgewatchError):
    """A command failed a check; ``reason`` is one of :data:`REFUSALS`, the message says why."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


def verify_command(command: DeviceCommand, trusted: TrustedKeys) -> None:
    """Raise :class:`CommandRefused` unless the command is signed by a trusted key over exactly
    these fields (:func:`~edge.contract.command.command_bytes`). Cheap enough for paho's thread."""
    sig = command.signature
    what = f"command {command.command_id} ({command.action} {command.device_id})"
    if sig is None:
        raise CommandRefused("unsigned", f"{what} is not signed")
    key = trusted.get(sig.key_id)
    if key is None:
        raise CommandRefused("unknown_key", f"{what} is signed by unknown key {sig.key_id}")
    try:
        key.verify(base64.b64decode(sig.value, validate=True), command_bytes(command))
    except (InvalidSignature, binascii.Error, ValueError):
        raise CommandRefused("bad_signature", f"{what}: signature by key {sig.key_id} does not match the command "
                                              "(tampered or forged)") from None


class CommandReceiver:
    """Receives, checks and hands over commands for one agent; see the module docstring."""

    def __init__(self, mqtt_cfg: MqttSection, *, agent_id: str, trusted_keys: TrustedKeys, rebaseline: Callable[[str], bool],
                 report: Callable[[ModelStatus], None], live: Callable[[], ModelManifest], max_age_s: float,
                 max_skew_s: float, clock: Callable[[], float] = time.time,
                 on_action: Callable[[StatusAction], None] = lambda a: None) -> None:
        self.cfg = mqtt_cfg
        self.agent_id = agent_id
        self.topic = command_topic(agent_id, mqtt_cfg.topic_prefix)
        self.trusted_keys = trusted_keys
        self.max_age_s = max_age_s
        self.max_skew_s = max_skew_s
        self.refused: Counter[str] = Counter()  # by reason label
        self.applied = 0
        self.subscribed = threading.Event()
        self._rebaseline = rebaseline
        self._report = report
        self._live = live
        self._clock = clock
        self._on_action = on_action
        self._taken: OrderedDict[str, None] = OrderedDict()  # paho's thread only
        self._accepted: queue.Queue[DeviceCommand] = queue.Queue(MAX_QUEUED)
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        """Connect asynchronously; paho's thread reconnects by itself and subscribes on each connect."""
        cfg = self.cfg
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{cfg.client_id}-commands", clean_session=False,
                             protocol=mqtt.MQTTv311)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls_ca_file:
            client.tls_set(ca_certs=cfg.tls_ca_file)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]  # paho annotates int; any seconds work
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        """Disconnect (the session stays on the broker); commands not yet polled are dropped."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    # -- paho's network thread -------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("mqtt_subscribe_refused subscription=%s reasons=%s", self.topic, reasons)
        else:
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.on_payload(bytes(msg.payload))
        except Exception:  # a bad command must never take the receiver (or the agent) down
            log.exception("command_failed topic=%s", msg.topic)

    def on_payload(self, payload: bytes) -> None:
        """Check one command and queue it for the worker, or refuse it. paho's thread; never blocks."""
        try:
            command = decode_command(payload)
        except ContractError as exc:
            self._refuse("malformed", str(exc))
            return
        try:
            self._check(command)
            self._accepted.put_nowait(command)
        except CommandRefused as exc:
            self._refuse(exc.reason, str(exc), command)
            return
        except queue.Full:
            self._refuse("busy", f"{MAX_QUEUED} commands already wait for the worker", command)
            return
        self._taken[command.command_id] = None
        while len(self._taken) > REMEMBERED:
            self._taken.popitem(last=False)

    def _check(self, c: DeviceCommand) -> None:
        verify_command(c, self.trusted_keys)
        if c.agent_id != self.agent_id:
            raise CommandRefused("wrong_agent", f"command {c.command_id} is for agent {c.agent_id}, not {self.agent_id}")
        age = self._clock() - c.issued_at
        if age > self.max_age_s:
            raise CommandRefused("stale", f"command {c.command_id} was issued {age:.0f} s ago, over "
                                          f"updates.command_max_age_s ({self.max_age_s:g})")
        if -age > self.max_skew_s:
            raise CommandRefused("future", f"command {c.command_id} is stamped {-age:.0f} s ahead of the agent's clock, over "
                                           f"windows.max_clock_skew_s ({self.max_skew_s:g})")
        if c.command_id in self._taken:
            raise CommandRefused("replayed", f"command {c.command_id} was already taken")

    # -- the worker thread -----------------------------------------------------------------------
    def poll(self) -> None:
        """Apply the queued commands: rebaseline each named device, then report it. Worker thread only."""
        while True:
            try:
                c = self._accepted.get_nowait()
            except queue.Empty:
                return
            if not self._rebaseline(c.device_id):
                self._refuse("adaptive_off", "the adaptive layer is off ([adaptive] enabled = false): nothing to rebaseline", c)
                continue
            self.applied += 1
            self._emit("rebaselined", f"new normal for {c.device_id} by incident {c.incident_id}: its warm-up starts again", c)

    def _refuse(self, reason: Refusal, detail: str, command: DeviceCommand | None = None) -> None:
        self.refused[reason] += 1
        self._emit("command_refused", f"{reason}: {detail}", command)

    def _emit(self, action: StatusAction, reason: str, c: DeviceCommand | None) -> None:
        device, command_id = (c.device_id, c.command_id) if c is not None else ("", "")
        log.log(logging.WARNING if action == "command_refused" else logging.INFO,
                "device_command action=%s device_id=%s command_id=%s reason=%s", action, device, command_id, reason)
        self._on_action(action)
        m = self._live()
        self._report(ModelStatus(agent_id=self.agent_id, action=action, model_name=m.name, model_version=m.version,
                                 reason=reason[:1000], at=self._clock(), live_version=m.version, device_id=device,
                                 command_id=command_id))
