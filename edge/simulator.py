"""A simulated fleet on MQTT: synthetic pumps (``edge.synth``) or a replayed CSV, published
as readings at a chosen pace, with the ground truth of every injected fault.

Event time and wall-clock pace are separate: readings are stamped ``sample_period_s`` apart
(the machine's own clock), and published ``rate_hz`` steps per wall-clock second, so a 1 Hz
machine can be simulated ten times faster than real time.

The publisher caps unacknowledged QoS 1 messages (paho's queue otherwise grows until message
ids wrap and messages are silently never sent), and counts every message it could not send.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.contract import Reading, encode_readings, readings_topic
from edge.synth import CHANNEL_NAMES, FAULT_KINDS, Fault, FaultKind, random_faults, simulate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InjectedFault:
    """A fault as the agent sees it: device, kind, channel and event-time bounds."""

    device_id: str
    kind: str
    channel: str
    start_ts: float
    end_ts: float


@dataclass
class DeviceStream:
    """One device's readings; ``tick`` is the publish step of each reading (None: its index), so a stream
    with readings removed (edge.fleetsim) keeps pace with the others."""

    device_id: str
    ts: np.ndarray
    values: np.ndarray
    channels: tuple[str, ...]
    faults: list[InjectedFault] = field(default_factory=list)
    tick: np.ndarray | None = None


@dataclass
class PublishStats:
    messages_sent: int = 0
    readings_sent: int = 0
    messages_failed: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class FaultPlan:
    """How many faults each device gets and their bounds in steps (:func:`edge.synth.random_faults`'
    ``count``, ``min_duration``, ``max_duration``, ``margin``); the defaults are ``random_faults``' own."""

    count: int
    min_duration: int = 30
    max_duration: int = 120
    margin: int = 200


_MIN_FAULT_SCALE = 0.25  # smaller, a fault (< 30 steps after < 50 clean ones) is barely a window: drop one instead


def plan_faults(steps: int, count: int) -> FaultPlan:
    """The default layout of ``count`` faults when it fits ``steps`` readings; otherwise the same
    layout shrunk in proportion (shorter faults, shorter clean margins), and when even a quarter-size
    layout does not fit, fewer faults, down to none. Never raises for ``steps >= 1, count >= 0``."""
    full = FaultPlan(count)
    while count > 0:
        scale = min(1.0, steps // count / (full.max_duration + full.margin))
        if scale == 1.0 and count == full.count:
            return full
        if scale >= _MIN_FAULT_SCALE:
            return FaultPlan(count, max(1, math.floor(full.min_duration * scale)), math.floor(full.max_duration * scale),
                             math.floor(full.margin * scale))
        count -= 1
    return FaultPlan(0)


def synthetic_fleet(devices: int, steps: int, *, seed: int = 0, start_ts: float = 1_767_225_600.0,
                    sample_period_s: float = 1.0, kinds: Sequence[FaultKind] = FAULT_KINDS,
                    faults_per_device: int = 2, prefix: str = "pump") -> list[DeviceStream]:
    """``devices`` pumps of ``steps`` readings each; faults placed at random but seeded.

    ``faults_per_device`` faults of the default length when they fit ``steps``; for a shorter
    stream they are shrunk or dropped (:func:`plan_faults`), which is logged once as
    ``simulator_faults_fitted``.
    """
    wanted = FaultPlan(faults_per_device if kinds else 0)
    plan = plan_faults(steps, wanted.count)
    if plan != wanted:
        shape = f"fault_steps={plan.min_duration}-{plan.max_duration} margin_steps={plan.margin}" if plan.count else "all dropped"
        log.warning("simulator_faults_fitted steps=%d requested=%d faults=%d %s (%d default faults need %d steps per device: "
                    "%d-%d steps each after %d clean ones)", steps, wanted.count, plan.count, shape, wanted.count,
                    wanted.count * (wanted.max_duration + wanted.margin), wanted.min_duration, wanted.max_duration, wanted.margin)
    fleet = []
    for i in range(devices):
        device = f"{prefix}-{i:03d}"
        faults: list[Fault] = []
        if plan.count:
            faults = random_faults(steps, seed=seed * 1000 + i + 7, count=plan.count, kinds=kinds, min_duration=plan.min_duration,
                                   max_duration=plan.max_duration, margin=plan.margin)
        values, _labels = simulate(steps, seed=seed * 1000 + i, faults=faults)
        ts = start_ts + sample_period_s * np.arange(steps)
        truth = [InjectedFault(device, f.kind, f.channel, float(ts[f.start]),
                               float(ts[min(f.start + f.duration, steps) - 1])) for f in faults]
        fleet.append(DeviceStream(device, ts, values, CHANNEL_NAMES, truth))
    return fleet


def replay_csv(path: Path, *, device_id: str | None = None, time_column: str = "datetime",
               skip: Sequence[str] = ("anomaly", "changepoint")) -> DeviceStream:
    """One device's readings from a CSV (``,`` or ``;``) with a time column (ISO datetime or
    epoch seconds, increasing) and one column per channel; columns in ``skip`` are left out.

    Raises :class:`OSError` when the file cannot be read and :class:`ValueError` naming the file
    (and the row and column) when its content is not such a CSV.
    """
    lines = path.read_text().replace("\r\n", "\n").replace("\r", "\n").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a header with a {time_column!r} column")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;")
    except csv.Error:
        dialect = csv.excel  # one column, or no delimiter in the header: the checks below say what is missing
    reader = csv.DictReader(lines, dialect=dialect)
    header = list(reader.fieldnames or ())
    if time_column not in header:
        raise ValueError(f"{path}: needs a {time_column!r} column, has {header}")
    channels = tuple(c for c in header if c not in (time_column, *skip))
    if not channels:
        raise ValueError(f"{path}: needs at least one channel column beside {time_column!r}, has {header}")
    rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: has a header but no rows")
    ts = np.array([_cell(r, time_column, n, path, _parse_time) for n, r in enumerate(rows, start=2)])
    values = np.array([[_cell(r, c, n, path, float) for c in channels] for n, r in enumerate(rows, start=2)])
    back = np.flatnonzero(np.diff(ts) <= 0)
    if back.size:
        raise ValueError(f"{path}: line {int(back[0]) + 3}: {time_column} {rows[int(back[0]) + 1][time_column]!r} "
                         "is not after the line before; times must increase")
    safe = tuple(c.replace(" ", "_") for c in channels)
    return DeviceStream(device_id or path.stem.replace(" ", "_"), ts, values, safe)


def _cell(row: dict[str, str], column: str, line: int, path: Path, parse: Callable[[str], float]) -> float:
    text = row.get(column)
    if text is None:
        raise ValueError(f"{path}: line {line} has no {column!r} field (too few fields)")
    try:
        value = parse(text)
    except ValueError:
        what = "a number or an ISO datetime" if parse is _parse_time else "a number"
        raise ValueError(f"{path}: line {line}: {column} {text!r} is not {what}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: line {line}: {column} {text!r} is not finite")
    return value


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.strip()).timestamp()


def _steps(d: DeviceStream) -> int:
    return len(d.ts) if d.tick is None or not len(d.tick) else int(d.tick[-1]) + 1


def paced_steps(fleet: Sequence[DeviceStream], rate_hz: float, batch: int) -> Iterator[tuple[int, list[tuple[str, bytes, int]]]]:
    """Yield (step, [(device, payload, readings)]) per publish tick; each tick carries the readings of ``batch``
    steps per device (``batch`` readings, or fewer where a stream's ``tick`` says some are missing)."""
    steps = max(_steps(d) for d in fleet)
    for start in range(0, steps, batch):
        messages = []
        for d in fleet:
            if d.tick is None:
                lo, hi = min(start, len(d.ts)), min(start + batch, len(d.ts))
            else:
                lo, hi = (int(i) for i in np.searchsorted(d.tick, [start, start + batch]))
            chunk = [Reading(d.device_id, float(d.ts[k]), dict(zip(d.channels, map(float, d.values[k]), strict=True)))
                     for k in range(lo, hi)]
            if chunk:
                messages.append((d.device_id, encode_readings(chunk), len(chunk)))
        yield start, messages


class Publisher:
    """QoS 1 publisher with a cap on unacknowledged messages. Not thread-safe; one per run."""

    def __init__(self, host: str, port: int, *, client_id: str = "edgewatch-sim", max_unacked: int = 1000,
                 prefix: str = "edgewatch", username: str | None = None, password: str | None = None) -> None:
        """Connect and start paho's network thread; raises :class:`ConnectionError` saying why when
        the broker cannot be reached or refuses the connection within 10 s."""
        self.prefix = prefix
        self._max_unacked = max_unacked
        self._unacked = 0
        self._acked = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self._client.username_pw_set(username, password)
        self._client.max_inflight_messages_set(min(max_unacked, 1000))
        self._client.on_publish = self._on_publish
        self._connected = threading.Event()
        self._refused = ""
        self._client.on_connect = self._on_connect
        try:
            self._client.connect(host, port)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to MQTT {host}:{port} ({exc.strerror or exc})") from exc
        self._client.loop_start()
        if not self._connected.wait(10) or self._refused:
            self._client.loop_stop()
            raise ConnectionError(f"MQTT {host}:{port} refused the connection ({self._refused})" if self._refused
                                  else f"cannot connect to MQTT {host}:{port} within 10 s")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, props: object) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object) -> None:
        with self._acked:
            self._unacked -= 1
            self._acked.notify_all()

    def publish(self, device_id: str, payload: bytes, timeout_s: float = 30.0) -> bool:
        """Publish one payload at QoS 1; blocks while ``max_unacked`` messages await their ack.
        Returns False (the caller counts it) when no slot frees up in time or paho refuses."""
        with self._acked:
            if not self._acked.wait_for(lambda: self._unacked < self._max_unacked, timeout_s):
                return False
            self._unacked += 1
        info = self._client.publish(readings_topic(device_id, self.prefix), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            with self._acked:
                self._unacked -= 1
            return False
        return True

    def close(self, timeout_s: float = 30.0) -> int:
        """Wait (bounded) for outstanding acks, disconnect; returns how many were never acked."""
        with self._acked:
            self._acked.wait_for(lambda: self._unacked == 0, timeout_s)
            unacked = self._unacked
        self._client.disconnect()
        self._client.loop_stop()
        return unacked


def run(fleet: Sequence[DeviceStream], publisher: Publisher, *, rate_hz: float, batch: int = 1,
        progress: Callable[[PublishStats, int, int], None] | None = None,
        stop: threading.Event | None = None) -> PublishStats:
    """Publish the fleet, ``rate_hz`` steps per second (0 = as fast as acks allow)."""
    stats = PublishStats()
    total = max(_steps(d) for d in fleet)
    started = time.monotonic()
    last_report = started
    for step, messages in paced_steps(fleet, rate_hz, batch):
        if stop is not None and stop.is_set():
            break
        if rate_hz > 0:
            delay = started + step / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for device_id, payload, readings in messages:
            if publisher.publish(device_id, payload):
                stats.messages_sent += 1
                stats.readings_sent += readings
            else:
                stats.messages_failed += 1
        now = time.monotonic()
        if progress is not None and now - last_report >= 1.0:
            stats.elapsed_s = now - started
            progress(stats, step + batch, total)
            last_report = now
    stats.elapsed_s = time.monotonic() - started
    return stats


def truth_document(fleet: Sequence[DeviceStream], stats: PublishStats, sample_period_s: float,
                   extra: dict[str, object] | None = None) -> dict[str, object]:
    """What was injected and sent, for scoring the detections afterwards; ``extra`` adds entries (a grouped
    fleet's ``groups`` and ``injected``, edge.fleetsim)."""
    return {
        "devices": [d.device_id for d in fleet],
        "channels": list(fleet[0].channels) if fleet else [],
        "sample_period_s": sample_period_s,
        "start_ts": min(float(d.ts[0]) for d in fleet),
        "end_ts": max(float(d.ts[-1]) for d in fleet),
        "faults": [asdict(f) for d in fleet for f in d.faults],
        "sent": asdict(stats),
        **(extra or {}),
    }
