"""The processor's typed configuration (``cloud.toml``): frozen dataclasses loaded from TOML.

Unknown sections or keys are a :class:`ConfigError` naming the file and the dotted key. Every
scalar key has an environment twin ``EDGEWATCH_<SECTION>__<KEY>`` read at load time (secrets
such as ``store.postgres_dsn`` belong there). See ``deploy/cloud.example.toml`` for every key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cloud.processor.routes import parse_routes
from edge.config_parse import build_section, check_host_ports, read_toml
from edge.contract import ConfigError
from edge.kafka_security import KafkaSecurity, check_security

SECRETS = {"kafka": frozenset({"password"}), "rollout": frozenset({"mqtt_password"})}  # environment only


@dataclass(frozen=True)
class ProcessorKafkaSection(KafkaSecurity):
    """``[kafka]``: topics, groups and polling; TLS and SASL keys (``security_protocol``, ``ssl_cafile``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ``sasl_mechanism``, ``username``, ``password``)
    from :class:`~edge.kafka_security.KafkaSecurity`, for the processor's and the archive's clients alike."""

    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "edgewatch-processor"
    client_id: str = "edgewatch-processor"
    anomalies_topic: str = "edgewatch.anomalies"
    telemetry_topic: str = "edgewatch.telemetry"
    alerts_topic: str = "edgewatch.alerts"
    deadletter_topic: str = "edgewatch.deadletter"
    escalations_topic: str = "edgewatch.escalations"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = 2000
    poll_timeout_s: float = 0.5
    session_timeout_s: float = 10.0
    outbox_orphan_s: float = 60.0  # alerts/dead letters a crashed process stored but never published: published after this


@dataclass(frozen=True)
class StoreSection:
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: str = "edgewatch.db"
    postgres_dsn: str = ""  # secret: set EDGEWATCH_STORE__POSTGRES_DSN rather than writing it in the file
    own_process: bool = True  # decoding, incidents and store writes in a second process, beside the next poll (docs/processor.md)


@dataclass(frozen=True)
class IncidentsSection:
    min_events: int = 3  # m
    window_s: float = 60.0  # W
    quiet_s: float = 300.0
    allowed_lateness_s: float = 30.0
    idle_advance_s: float = 0.0  # 0: watermarks move only with events; >0 see docs/processor.md
    max_clock_skew_s: float = 300.0  # an event whose window_end is further ahead of the processor's clock is dead-lettered


@dataclass(frozen=True)
class FleetSection:
    min_devices: int = 3  # k
    window_s: float = 120.0
    quiet_s: float = 300.0
    prefix_separator: str = "-"
    prefix_parts: int = 0  # >0: site = the first N parts of the device id; 0: only the sites table
    sites: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    evaluate_interval_s: float = 1.0  # wall-clock seconds between fleet evaluations (0: after every poll)

    @functools.cached_property
    def _device_sites(self) -> dict[str, str]:
        return {d: site for site, devices in self.sites.items() for d in devices}

    def site_of(self, device_id: str) -> str:
        """The site or group of a device: the ``sites`` table first, then the prefix rule, else ``""``."""
        site = self._device_sites.get(device_id)
        if site is not None:
            return site
        if self.prefix_parts > 0:
            parts = device_id.split(self.prefix_separator)
            if len(parts) > self.prefix_parts:
                return self.prefix_separator.join(parts[: self.prefix_parts])
        return ""


@dataclass(frozen=True)
class DriftSection:
    enabled: bool = True
    window_s: float = 3600.0
    sustain_windows: int = 3
    rate_factor: float = 3.0
    score_factor: float = 2.0
    expected_rate_per_hour: float = 1.0  # used when no manifest for the model is known
    expected_score_ratio: float = 1.5  # mean score / threshold of anomalies, when no manifest says
    manifest_dir: str = ""


@dataclass(frozen=True)
class ArchiveSection:
    enabled: bool = False
    dir: str = "archive"
    group_id: str = "edgewatch-archive"
    flush_rows: int = 5000
    flush_interval_s: float = 60.0


@dataclass(frozen=True)
class RolloutSection:
    """``[rollout]``: waves advanced or paused by the processor (cloud.rollout, docs/rollouts.md)."""

    enabled: bool = False
    group_id: str = "edgewatch-rollout"  # its consumer group on the status topic
    status_topic: str = "edgewatch.status"
    registry: str = "registry"  # the registry root, for the bundle of the next wave
    mqtt_host: str = "127.0.0.1"  # where waves are announced
    mqtt_port: int = 1883
    mqtt_prefix: str = "edgewatch"
    mqtt_username: str = ""
    mqtt_password: str = ""  # secret: EDGEWATCH_ROLLOUT__MQTT_PASSWORD
    mqtt_tls_ca_file: str = ""
    waves: tuple[float, ...] = (10.0, 50.0, 100.0)  # percent of the group's compatible agents, cumulative
    min_exposure_device_hours: float = 1.0  # on each side before a wave is judged
    max_ratio: float = 3.0  # new cohort's rate / the rest's above this: paused
    max_shadow_rejection_share: float = 0.5  # share of a wave's agents that rejected the candidate in shadow
    min_events: int = 5  # the new cohort needs this many events (or incidents of a kind) to diverge
    min_wave_s: float = 600.0  # a wave runs at least this long before the next
    interval_s: float = 10.0  # between two comparisons


@dataclass(frozen=True)
class AlertsSection:
    """``[alerts]``: routes by incident kind, ``kind = ["topic=NAME", "label=value", ...]`` (cloud.processor.routes)."""

    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class PeersSection:
    """``[peers]``: a device's recent telemetry against its group's median and MAD (cloud.fleetwatch.peers)."""

    enabled: bool = False
    group_by: Literal["site", "agent", "regex"] = "site"  # site: fleet.site_of; agent: the sending agent; regex: pattern
    pattern: str = ""  # group_by = "regex": a regular expression on the device id whose first capture group is the key
    span_s: float = 600.0  # a device's summary: the mean of its telemetry windows' means over this trailing span
    tick_s: float = 60.0  # event time between two evaluations
    z_limit: float = 5.0  # |robust z| above this is outside the group
    min_duration_s: float = 600.0  # outside for this long (event time) opens peer_outlier
    min_group_size: int = 5  # devices with a summary in a group, fewer: the group is skipped
    min_spread: float = 1e-6  # floor of the group's scale (1.4826 x MAD), so identical peers do not divide by zero
    startup_grace_s: float = 600.0  # a group key that has matched no device by then is reported
    max_devices: int = 100_000  # state kept for at most this many devices (the least recently seen are dropped)


@dataclass(frozen=True)
class SilenceSection:
    """``[silence]``: device_silent from the agents' reports (cloud.fleetwatch.silence)."""

    enabled: bool = False
    silent_after_periods: float = 10.0  # nothing for more than this many sample periods opens device_silent
    default_period_s: float = 1.0  # the sample period when no manifest in drift.manifest_dir names the device's model


@dataclass(frozen=True)
class EscalationSection:
    """``[escalation]``: the cloud scorer of escalated windows (cloud.processor.escalation, docs/fleet.md)."""

    enabled: bool = False
    group_id: str = "edgewatch-escalation"  # its consumer group on kafka.escalations_topic
    registry: str = "registry"  # the registry root holding the model(s)
    model: str = ""  # name[:version][,name[:version]...]; no version: production; several: their normalised scores averaged
    confirm_ratio: float = 1.0  # mean normalised cloud score at or above this: confirmed, else dismissed
    band_low: float = 0.8  # the agents' band: an event whose score / threshold lies in it waits for its verdict
    band_high: float = 1.25
    verdict_wait_s: float = 30.0  # an incident alert held for verdicts is sent after this long without them
    max_payload_bytes: int = 256 * 1024  # larger escalations are dead-lettered
    interval_s: float = 1.0  # held alerts are decided this often
    threads: int = 1  # onnxruntime threads per model


@dataclass(frozen=True)
class ProcessorMetricsSection:
    port: int = 0  # 0: no HTTP endpoint
    host: str = "127.0.0.1"
    lag_interval_s: float = 5.0


@dataclass(frozen=True)
class ProcessorConfig:
    kafka: ProcessorKafkaSection = ProcessorKafkaSection()
    store: StoreSection = StoreSection()
    incidents: IncidentsSection = IncidentsSection()
    fleet: FleetSection = FleetSection()
    drift: DriftSection = DriftSection()
    archive: ArchiveSection = ArchiveSection()
    rollout: RolloutSection = RolloutSection()
    escalation: EscalationSection = EscalationSection()
    alerts: AlertsSection = AlertsSection()
    peers: PeersSection = PeersSection()
    silence: SilenceSection = SilenceSection()
    metrics: ProcessorMetricsSection = ProcessorMetricsSection()

    def masked(self) -> dict[str, Any]:
        """The config as a dict with secrets masked, for the start-up log line."""
        data = dataclasses.asdict(self)
        data["store"]["postgres_dsn"] = _mask_dsn(self.store.postgres_dsn)
        data["kafka"]["password"] = "***" if self.kafka.password else ""
        data["rollout"]["mqtt_password"] = "***" if self.rollout.mqtt_password else ""
        return data


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> ProcessorConfig:
    """Read ``path`` (or only defaults and environment when None); raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    where = str(path) if path else "<defaults>"
    raw = read_toml(Path(path)) if path is not None else {}
    sections = {f.name: f for f in dataclasses.fields(ProcessorConfig)}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"{where}: unknown key {key!r} (known sections: {', '.join(sections)})")
    hints = typing.get_type_hints(ProcessorConfig)
    built = {name: build_section(hints[name], raw.get(name, {}), name, where, env, SECRETS.get(name, frozenset()), strict_env=True)
             for name in sections}
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    built["kafka"] = check_security(built["kafka"], section="kafka", where=where, base=base)
    config = ProcessorConfig(**built)
    _validate(config, where)
    return config


def _validate(c: ProcessorConfig, where: str) -> None:
    checks = [
        (c.incidents.min_events >= 1, "incidents.min_events", c.incidents.min_events, "must be >= 1"),
        (c.incidents.window_s >= 0, "incidents.window_s", c.incidents.window_s, "must be >= 0"),
        (c.incidents.quiet_s > 0, "incidents.quiet_s", c.incidents.quiet_s, "must be > 0"),
        (c.incidents.allowed_lateness_s >= 0, "incidents.allowed_lateness_s", c.incidents.allowed_lateness_s, "must be >= 0"),
        (c.incidents.max_clock_skew_s >= 0, "incidents.max_clock_skew_s", c.incidents.max_clock_skew_s, "must be >= 0"),
        (c.fleet.min_devices >= 2, "fleet.min_devices", c.fleet.min_devices, "must be >= 2"),
        (c.fleet.quiet_s >= 0, "fleet.quiet_s", c.fleet.quiet_s, "must be >= 0"),
        (c.fleet.evaluate_interval_s >= 0, "fleet.evaluate_interval_s", c.fleet.evaluate_interval_s, "must be >= 0"),
        (c.drift.window_s > 0, "drift.window_s", c.drift.window_s, "must be > 0"),
        (c.drift.sustain_windows >= 1, "drift.sustain_windows", c.drift.sustain_windows, "must be >= 1"),
        (c.kafka.max_poll_records >= 1, "kafka.max_poll_records", c.kafka.max_poll_records, "must be >= 1"),
        (c.store.backend != "postgres" or bool(c.store.postgres_dsn), "store.postgres_dsn", "",
         "is required for the postgres backend (set EDGEWATCH_STORE__POSTGRES_DSN)"),
    ]
    r = c.rollout
    checks += [
        (bool(r.waves) and all(0 < w <= 100 for w in r.waves) and list(r.waves) == sorted(set(r.waves)) and r.waves[-1] == 100,
         "rollout.waves", list(r.waves), "must rise within (0, 100] and end at 100"),
        (r.min_exposure_device_hours > 0, "rollout.min_exposure_device_hours", r.min_exposure_device_hours, "must be > 0"),
        (r.max_ratio > 1, "rollout.max_ratio", r.max_ratio, "must be > 1"),
        (0 <= r.max_shadow_rejection_share <= 1, "rollout.max_shadow_rejection_share", r.max_shadow_rejection_share,
         "must be within [0, 1]"),
        (r.min_events >= 1, "rollout.min_events", r.min_events, "must be >= 1"),
        (r.min_wave_s >= 0, "rollout.min_wave_s", r.min_wave_s, "must be >= 0"),
        (r.interval_s > 0, "rollout.interval_s", r.interval_s, "must be > 0"),
        (1 <= r.mqtt_port <= 65535, "rollout.mqtt_port", r.mqtt_port, "must be 1-65535"),
    ]
    p, q = c.peers, c.silence
    checks += [
        (p.span_s > 0, "peers.span_s", p.span_s, "must be > 0"),
        (p.tick_s > 0, "peers.tick_s", p.tick_s, "must be > 0"),
        (p.z_limit > 0, "peers.z_limit", p.z_limit, "must be > 0"),
        (p.min_duration_s >= 0, "peers.min_duration_s", p.min_duration_s, "must be >= 0"),
        (p.min_group_size >= 3, "peers.min_group_size", p.min_group_size, "must be >= 3"),
        (p.min_spread > 0, "peers.min_spread", p.min_spread, "must be > 0"),
        (p.max_devices >= 1, "peers.max_devices", p.max_devices, "must be >= 1"),
        (q.silent_after_periods > 0, "silence.silent_after_periods", q.silent_after_periods, "must be > 0"),
        (q.default_period_s > 0, "silence.default_period_s", q.default_period_s, "must be > 0"),
    ]
    e = c.escalation
    checks += [
        (not e.enabled or bool(e.model), "escalation.model", e.model, "must name a registered model when escalation.enabled"),
        (0 < e.band_low <= 1 <= e.band_high, "escalation.band_low", (e.band_low, e.band_high), "must be 0 < band_low <= 1 <= band_high"),
        (e.confirm_ratio > 0, "escalation.confirm_ratio", e.confirm_ratio, "must be > 0"),
        (e.verdict_wait_s >= 0, "escalation.verdict_wait_s", e.verdict_wait_s, "must be >= 0"),
        (e.max_payload_bytes >= 1024, "escalation.max_payload_bytes", e.max_payload_bytes, "must be >= 1024"),
        (e.interval_s > 0, "escalation.interval_s", e.interval_s, "must be > 0"),
        (e.threads >= 1, "escalation.threads", e.threads, "must be >= 1"),
    ]
    for ok, key, value, rule in checks:
        if not ok:
            raise ConfigError(f"{where}: {key} = {value!r} {rule}")
    parse_routes(c.alerts.routes, where)
    if c.peers.enabled:
        _check_group_key(c, where)
    check_host_ports(c.kafka.bootstrap, "kafka.bootstrap", where)  # the processor's and the archive's clients


def _check_group_key(c: ProcessorConfig, where: str) -> None:
    """A ``[peers]`` group key that can never name a group is a config error (reported at start-up)."""
    p = c.peers
    if p.group_by == "regex":
        try:
            groups = re.compile(p.pattern).groups
        except re.error as exc:
            raise ConfigError(f"{where}: peers.pattern = {p.pattern!r} is not a regular expression ({exc})") from None
        if groups < 1:
            raise ConfigError(f"{where}: peers.pattern = {p.pattern!r} has no capture group, so it can never name a group "
                              "(the first group's match is the key)")
    elif p.pattern:
        raise ConfigError(f"{where}: peers.pattern = {p.pattern!r} is used only with peers.group_by = 'regex'")
    if p.group_by == "site" and not c.fleet.sites and c.fleet.prefix_parts <= 0:
        raise ConfigError(f"{where}: peers.group_by = 'site' can never match a device: neither fleet.sites nor "
                          "fleet.prefix_parts names a site")


def _mask_dsn(dsn: str) -> str:
    return re.sub(r"(password=)\S+", r"\1***", re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", dsn))
