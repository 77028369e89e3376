"""What :func:`cloud.backtest.backtest` returns: per device counts, and the figures per group and
overall computed from them when asked (quantiles over devices, labelled incidents caught and
raised), the manifest's prediction (:meth:`BacktestResult.expected_alerts`) and the JSON form."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud.processor.config import IncidentsSection
from cloud.retrain.dataset import LabelledIncident
from edge.contract import ConfigError, ExpectedAlerts

INCIDENT_GAP_S = IncidentsSection().quiet_s  # the processor's: a device's alerts closer than this are one incident
QUANTILES = {"p05": 0.05, "p50": 0.5, "p95": 0.95}


def all_one_group(device_id: str) -> str:
    return "all"


@dataclass
class DeviceResult:
    """One device's replay. ``incidents``: (first, last) alert window end of each incident."""

    device_id: str
    agent_id: str = ""
    windows: int = 0      # windows replayed
    skipped: int = 0      # windows whose channels or length do not fit the model
    over: int = 0         # windows scored above the manifest's threshold (raw, before the layer and k-of-n)
    alerts: int = 0       # windows that fire: the agent's anomaly events
    covered_s: float = 0.0
    first: float = math.inf
    last: float = -math.inf
    incidents: list[tuple[float, float]] = field(default_factory=list)
    daily: dict[str, int] = field(default_factory=dict)  # UTC day of window_start -> alerts (0 on days with windows)
    run_start: float = math.nan  # the open coverage run's start (replay state)

    @property
    def device_days(self) -> float:
        return self.covered_s / 86400.0

    @property
    def alerts_per_device_day(self) -> float:
        return self.alerts / self.device_days if self.covered_s > 0 else 0.0

    @property
    def window_rate(self) -> float:
        return self.over / self.windows if self.windows else 0.0


@dataclass(frozen=True)
class Summary:
    """A group's (or the whole replay's) figures. Quantiles are over its devices."""

    devices: int
    device_days: float
    windows: int
    skipped: int
    alerts: int
    incidents: int
    alerts_per_device_day: Mapping[str, float]  # p05, p50, p95 over devices
    window_rate: Mapping[str, float]            # p05, p50, p95 over devices
    true_positive: int                          # labelled true-positive incidents in the replay
    caught: int                                 # ... overlapped by a backtest incident of their device
    false_positive: int                         # labelled false-positive incidents in the replay
    raised: int                                 # ... overlapped by a backtest incident

    @property
    def caught_share(self) -> float | None:
        return self.caught / self.true_positive if self.true_positive else None


@dataclass
class BacktestResult:
    """What :func:`backtest` returns; figures are computed from ``devices`` when asked."""

    model: str
    version: str
    sha256: str
    threshold: float
    since: float          # the replayed period: the range asked for, else the first window's start
    until: float          # ... else the last window's end
    devices: dict[str, DeviceResult]
    group_of: Callable[[str], str] = all_one_group
    labels: Sequence[LabelledIncident] = ()
    incident_gap_s: float = INCIDENT_GAP_S

    def group(self, d: DeviceResult) -> str:
        return self.group_of(d.device_id)

    def groups(self) -> dict[str, Summary]:
        names = sorted({self.group(d) for d in self.devices.values()})
        return {g: self._summary([d for d in self.devices.values() if self.group(d) == g]) for g in names}

    def overall(self) -> Summary:
        return self._summary(list(self.devices.values()))

    def daily_by_group(self) -> dict[str, dict[str, int]]:
        """Group -> UTC day -> alerts, for the plot."""
        out: dict[str, dict[str, int]] = {}
        for d in self.devices.values():
            days = out.setdefault(self.group(d), {})
            for day, n in d.daily.items():
                days[day] = days.get(day, 0) + n
        return out

    def label_outcomes(self) -> list[tuple[LabelledIncident, str, bool]]:
        """Each labelled incident of a replayed device within that device's replayed span: (incident,
        its group, whether a backtest incident of one of its devices overlaps it)."""
        out = []
        for inc in self.labels:
            mine = [self.devices[d] for d in inc.device_ids if d in self.devices and self.devices[d].windows
                    and inc.start <= self.devices[d].last and self.devices[d].first <= inc.end]
            if mine:
                hit = any(a <= inc.end and inc.start <= b for d in mine for a, b in d.incidents)
                out.append((inc, self.group(mine[0]), hit))
        return out

    def _summary(self, devices: list[DeviceResult]) -> Summary:
        live = [d for d in devices if d.windows]
        ids = {d.device_id for d in devices}
        outcomes = [(inc, hit) for inc, _g, hit in self.label_outcomes() if ids & set(inc.device_ids)]
        return Summary(
            devices=len(live), device_days=sum(d.device_days for d in live), windows=sum(d.windows for d in devices),
            skipped=sum(d.skipped for d in devices), alerts=sum(d.alerts for d in devices),
            incidents=sum(len(d.incidents) for d in devices),
            alerts_per_device_day=quantiles([d.alerts_per_device_day for d in live]),
            window_rate=quantiles([d.window_rate for d in live]),
            true_positive=sum(i.label == "true_positive" for i, _ in outcomes),
            caught=sum(i.label == "true_positive" and hit for i, hit in outcomes),
            false_positive=sum(i.label == "false_positive" for i, _ in outcomes),
            raised=sum(i.label == "false_positive" and hit for i, hit in outcomes))

    def expected_alerts(self, baseline: BacktestResult | None, max_ratio: float) -> ExpectedAlerts:
        """The prediction the manifest carries: quantiles over the replayed devices, the period, and
        ``baseline``'s (production on the same replay) median window rate."""
        s = self.overall()
        if not s.devices or s.device_days <= 0:
            raise ConfigError(f"backtest of {self.model} {self.version}: no device replayed; nothing to predict")
        return ExpectedAlerts(since=self.since, until=self.until, devices=s.devices, device_days=round(s.device_days, 6),
                              alerts_per_device_day=s.alerts_per_device_day, window_rate=s.window_rate,
                              baseline_window_rate=None if baseline is None else baseline.overall().window_rate["p50"],
                              max_ratio=max_ratio)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the model, the period, overall, per group and per device."""
        def summary(s: Summary) -> dict[str, Any]:
            return {**dataclasses.asdict(s), "caught_share": s.caught_share}

        return {"model": self.model, "version": self.version, "sha256": self.sha256, "threshold": self.threshold,
                "since": self.since, "until": self.until, "incident_gap_s": self.incident_gap_s,
                "overall": summary(self.overall()), "groups": {g: summary(s) for g, s in self.groups().items()},
                "devices": {d.device_id: {"group": self.group(d), "agent_id": d.agent_id, "windows": d.windows, "skipped": d.skipped,
                                          "alerts": d.alerts, "incidents": len(d.incidents), "device_days": d.device_days,
                                          "alerts_per_device_day": d.alerts_per_device_day, "window_rate": d.window_rate}
                            for d in self.devices.values()},
                "alerts_per_day": self.daily_by_group()}


def quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {k: 0.0 for k in QUANTILES}
    return {k: float(np.quantile(np.asarray(values, dtype=np.float64), q)) for k, q in QUANTILES.items()}
