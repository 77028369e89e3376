"""Which scored windows become telemetry samples: every Nth window of a device, and the windows
around each anomaly (``context`` before, the anomaly itself, ``context`` after).

Pure logic, called on the worker thread in window order per device. A window is sampled at
most once, whatever the reasons it qualifies for. The windows kept for context are copies, so a
batch's arrays are not held on to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge.contract.samples import SampleReason
from edge.windows import Window


@dataclass(frozen=True)
class Scored:
    """A window with its verdict."""

    window: Window
    score: float
    threshold: float
    anomalous: bool


@dataclass(frozen=True)
class Sample:
    scored: Scored
    reason: SampleReason


@dataclass
class _DeviceState:
    recent: deque[Scored]
    after: int = 0          # windows still to send after the last anomaly
    last_sent: int = -1     # seq of the last window sampled
    counted: int = 0        # windows seen, for every-Nth


class TelemetrySampler:
    def __init__(self, every_n_windows: int, context_windows: int) -> None:
        self.every_n = every_n_windows
        self.context = context_windows
        self._devices: dict[str, _DeviceState] = {}

    def observe(self, item: Scored) -> list[Sample]:
        """Record one scored window; returns the samples it releases (possibly earlier windows)."""
        dev = self._devices.get(item.window.device_id)
        if dev is None:
            dev = self._devices[item.window.device_id] = _DeviceState(deque(maxlen=self.context or 1))
        out: list[Sample] = []
        seq = item.window.seq
        if item.anomalous:
            for earlier in dev.recent if self.context else ():
                if earlier.window.seq > dev.last_sent:
                    out.append(Sample(earlier, "anomaly_context"))
                    dev.last_sent = earlier.window.seq
            out.append(Sample(item, "anomaly_context"))
            dev.after = self.context
        elif dev.after > 0:
            dev.after -= 1
            out.append(Sample(item, "anomaly_context"))
        elif self.every_n and dev.counted % self.every_n == 0:
            out.append(Sample(item, "sampled"))
        dev.counted += 1
        if out:
            dev.last_sent = max(dev.last_sent, seq)
        if self.context:
            dev.recent.append(_detached(item))
        return out

    def forget(self, device_id: str) -> None:
        """Drop ``device_id``'s state (every-Nth count, context kept, context still to send)."""
        self._devices.pop(device_id, None)

    def quiet(self, device_id: str) -> bool:
        """No anomaly context still to send for ``device_id``: :meth:`observe_quiet` may be used."""
        dev = self._devices.get(device_id)
        return dev is None or dev.after == 0

    def observe_quiet(self, device_id: str, count: int, item: Callable[[int], Scored]) -> list[Sample]:
        """:meth:`observe` for ``count`` consecutive non-anomalous windows of a :meth:`quiet`
        device, ``item(j)`` the j-th; builds only the windows it samples or keeps for context."""
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _DeviceState(deque(maxlen=self.context or 1))
        out: list[Sample] = []
        if self.every_n:
            out = [Sample(item(j), "sampled") for j in range((-dev.counted) % self.every_n, count, self.every_n)]
        dev.counted += count
        if out:
            dev.last_sent = max(dev.last_sent, out[-1].scored.window.seq)
        if self.context:
            dev.recent.extend(_detached(item(j)) for j in range(max(0, count - self.context), count))
        return out


def _detached(item: Scored) -> Scored:
    w = item.window
    return Scored(Window(w.device_id, w.seq, w.ts.copy(), w.values.copy(), w.segment), item.score, item.threshold, item.anomalous)
