"""The agent's configuration: typed, frozen, loaded from TOML with environment twins.

Every key of every section has a twin ``EDGEWATCH_<SECTION>__<KEY>`` (``EDGEWATCH_MQTT__PORT``)
read when :func:`load_config` runs; the environment wins over the file. An unknown key in the
file is a :class:`ConfigError` naming the file and the dotted key. An unknown key in a known
section of the environment is only logged, because other edgewatch deployables share the prefix.
Secrets (``mqtt.password``, ``kafka.password``) come from the environment only and never
appear in ``repr`` or in :meth:`Config.describe`.

Relative paths (``outbox.path``, ``model.path``) resolve against the config file's folder.
With no ``model.path`` the agent uses the default model, ``models/zoo/default``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from edge.adaptive import AdaptiveSettings
from edge.config_parse import build_section, check_host_ports, read_toml
from edge.contract import ConfigError
from edge.contract._fields import NAME_RE
from edge.escalation import EscalationSettings
from edge.kafka_security import KafkaSecurity, check_security
from edge.sensorhealth import SensorHealthSettings

log = logging.getLogger(__name__)

OverflowPolicy = Literal["drop_newest", "drop_oldest"]
SyncMode = Literal["FULL", "NORMAL"]
SECRETS = frozenset({("mqtt", "password"), ("kafka", "password")})
RENAMED = {"kafka": {"bootstrap_servers": "bootstrap"}}
"""Deprecated keys by section and their new names: read with a warning (the processor and the
retraining trigger call it ``kafka.bootstrap``, and one ``EDGEWATCH_KAFKA__BOOTSTRAP`` now sets all three)."""
MASK = "***"


@dataclass(frozen=True)
class AgentSection:
    """``[agent]``: identity, the intake queue, payload limits, the shutdown bound and the bound on devices."""

    id: str = ""  # empty: "agent-<hostname>"
    tick_s: float = 0.05
    batch_linger_s: float = 0.005  # the worker takes a message once it has waited this long, with all queued beside it
    queue_max_messages: int = 10_000
    queue_max_bytes: int = 8 * 1024 * 1024  # payload bytes queued; size both bounds for the device's memory
    queue_wait_s: float = 5.0  # a full queue: paho's thread waits this long for room (the broker keeps the rest), then drops
    overflow: OverflowPolicy = "drop_oldest"
    max_payload_bytes: int = 256 * 1024
    deadletter_max_bytes: int = 4096
    max_batch_windows: int = 4096
    shutdown_timeout_s: float = 10.0
    max_devices: int = 2_000  # devices with windows held (2,000 streaming fit the unit's 256 MB); new ids beyond: dead-lettered
    device_idle_evict_s: float = 3600.0  # a device without a reading this long is forgotten (its partial window lost)


@dataclass(frozen=True)
class MqttSection:
    """``[mqtt]``: the broker the sensors publish to. QoS 1 and a persistent session, always."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""  # empty: "edgewatch-<agent id>"; must stay fixed for the session to persist
    topic_prefix: str = "edgewatch"
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 5.0
    tls_ca_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class KafkaSection(KafkaSecurity):
    """``[kafka]``: where events, telemetry and dead letters go; TLS and SASL keys from
    :class:`~edge.kafka_security.KafkaSecurity` (``security_protocol``, ``ssl_cafile``, ... ``password``)."""

    bootstrap: str = "127.0.0.1:9092"
    client_id: str = ""  # empty: "edgewatch-<agent id>"
    anomalies_topic: str = "edgewatch.anomalies"
    telemetry_topic: str = "edgewatch.telemetry"
    deadletter_topic: str = "edgewatch.deadletter"
    status_topic: str = "edgewatch.status"
    escalations_topic: str = "edgewatch.escalations"
    batch_rows: int = 500
    request_timeout_ms: int = 10_000
    delivery_timeout_ms: int = 30_000
    bootstrap_timeout_ms: int = 5_000
    backoff_min_s: float = 0.2
    backoff_max_s: float = 10.0


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: the artifact folder (``model.onnx`` + ``manifest.json``) and its threads."""

    path: str = ""  # empty: models/zoo/default
    threads: int = 1


@dataclass(frozen=True)
class WindowsSection:
    """``[windows]``: a gap longer than ``gap_periods`` sample periods starts a new window; a
    reading stamped more than ``max_clock_skew_s`` after the agent's clock is dropped."""

    gap_periods: float = 5.0
    max_clock_skew_s: float = 5.0


@dataclass(frozen=True)
class DecisionSection:
    """``[decision]``: threshold (default: the manifest's), per-device overrides, k-of-n debounce."""

    threshold: float | None = None
    k: int = 1
    n: int = 1
    device_thresholds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxSection:
    """``[outbox]``: the SQLite file, its bound in payload bytes and its sync policy."""

    path: str = "edgewatch-outbox.sqlite"
    max_bytes: int = 64 * 1024 * 1024
    synchronous: SyncMode = "FULL"


@dataclass(frozen=True)
class TelemetrySection:
    """``[telemetry]``: sample every Nth window (0: off) and the windows around each anomaly."""

    every_n_windows: int = 100
    anomaly_context_windows: int = 2


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: the Prometheus endpoint; port 0 turns it off."""

    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class UpdatesSection:
    """``[updates]``: signed model updates over MQTT, tried in shadow before they go live."""

    enabled: bool = False
    group: str = "default"            # announce topic: <mqtt.topic_prefix>/models/<group>/announce
    trusted_keys_dir: str = ""        # folder of Ed25519 public keys (*.pub); required when enabled
    state_dir: str = "edgewatch-models"  # downloads and kept versions
    shadow_min_windows: int = 200
    shadow_min_seconds: float = 10.0
    shadow_rate_factor: float = 3.0   # reject above this many times the live (or expected) alert rate
    shadow_rate_floor: float = 0.02
    shadow_latency_factor: float = 5.0
    shadow_prediction_tolerance: float = 2.0  # the signed prediction's window-rate interval widened by this factor
    shadow_baseline_floor: float = 0.001  # the smallest production rate the prediction's max_ratio is taken of
    max_artifact_bytes: int = 64 * 1024 * 1024   # announces of a larger model.onnx are refused before download
    max_download_bytes: int = 128 * 1024 * 1024  # bound on the bytes held under <state_dir>/downloads
    command_max_age_s: float = 600.0  # a signed command (--new-normal) issued longer ago than this is refused
    report_interval_s: float = 60.0   # a "report" status (live version, runtime, memory, disk, devices) this often; 0: off


@dataclass(frozen=True)
class Config:
    agent: AgentSection = field(default_factory=AgentSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    kafka: KafkaSection = field(default_factory=KafkaSection)
    model: ModelSection = field(default_factory=ModelSection)
    windows: WindowsSection = field(default_factory=WindowsSection)
    decision: DecisionSection = field(default_factory=DecisionSection)
    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    sensor_health: SensorHealthSettings = field(default_factory=SensorHealthSettings)
    outbox: OutboxSection = field(default_factory=OutboxSection)
    telemetry: TelemetrySection = field(default_factory=TelemetrySection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    updates: UpdatesSection = field(default_factory=UpdatesSection)
    escalation: EscalationSettings = field(default_factory=EscalationSettings)
    source: str = "<defaults>"

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every setting by section, secrets masked: what the agent logs at start."""
        out: dict[str, dict[str, Any]] = {}
        for sec in fields(self):
            if sec.name == "source":
                continue
            section = getattr(self, sec.name)
            out[sec.name] = {
                f.name: (MASK if (sec.name, f.name) in SECRETS and getattr(section, f.name) else getattr(section, f.name))
                for f in fields(section)
            }
            if "device_thresholds" in out[sec.name]:
                out[sec.name]["device_thresholds"] = dict(out[sec.name]["device_thresholds"])
        return out


def default_model_dir() -> Path:
    """``models/zoo/default`` beside the ``edge`` package (a source checkout), else under the cwd."""
    here = Path(__file__).resolve().parent.parent / "models" / "zoo" / "default"
    return here if here.exists() else Path.cwd() / "models" / "zoo" / "default"


def load_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (``None``: defaults only), apply environment twins, validate, resolve paths.

    Raises :class:`ConfigError` naming the file (or variable) and the dotted key.
    """
    env = os.environ if env is None else env
    source = str(path) if path is not None else "<defaults>"
    raw = read_toml(Path(path)) if path is not None else {}
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    sections = {f.name: f.type for f in fields(Config) if f.name != "source"}
    values: dict[str, Any] = {}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"{source}: unknown key {key!r} (sections: {', '.join(sections)})")
    for name in sections:
        secrets = frozenset(key for section, key in SECRETS if section == name)
        values[name] = build_section(type(getattr(Config(), name)), raw.get(name, {}), name, source, env, secrets,
                                     renamed=RENAMED.get(name))
    config = Config(**values, source=source)
    return _finish(config, base)


def _finish(config: Config, base: Path) -> Config:
    agent_id = config.agent.id or _hostname_id()
    if not NAME_RE.match(agent_id):
        raise ConfigError(f"{config.source}: 'agent.id' {agent_id!r} must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    model_path = Path(config.model.path) if config.model.path else default_model_dir()
    outbox_path = Path(config.outbox.path)
    updates_dir = Path(config.updates.state_dir)
    keys_dir = Path(config.updates.trusted_keys_dir) if config.updates.trusted_keys_dir else None
    config = replace(
        config,
        agent=replace(config.agent, id=agent_id),
        mqtt=replace(config.mqtt, client_id=config.mqtt.client_id or f"edgewatch-{agent_id}"),
        kafka=check_security(replace(config.kafka, client_id=config.kafka.client_id or f"edgewatch-{agent_id}"),
                             section="kafka", where=config.source, base=base),
        model=replace(config.model, path=str(model_path if model_path.is_absolute() else base / model_path)),
        outbox=replace(config.outbox, path=str(outbox_path if outbox_path.is_absolute() else base / outbox_path)),
        updates=replace(config.updates, state_dir=str(updates_dir if updates_dir.is_absolute() else base / updates_dir),
                        trusted_keys_dir="" if keys_dir is None else str(keys_dir if keys_dir.is_absolute() else base / keys_dir)),
    )
    _validate(config)
    return config


def _hostname_id() -> str:
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname()) or "host"
    return f"agent-{host}"[:128]


def _validate(c: Config) -> None:
    checks: list[tuple[bool, str, Any, str]] = [
        (c.agent.tick_s > 0, "agent.tick_s", c.agent.tick_s, "must be > 0"),
        (0 <= c.agent.batch_linger_s <= c.agent.tick_s, "agent.batch_linger_s", c.agent.batch_linger_s, "must be 0-agent.tick_s"),
        (c.agent.queue_max_messages >= 1, "agent.queue_max_messages", c.agent.queue_max_messages, "must be >= 1"),
        (c.agent.queue_max_bytes >= 1, "agent.queue_max_bytes", c.agent.queue_max_bytes, "must be >= 1"),
        (0 <= c.agent.queue_wait_s <= 10, "agent.queue_wait_s", c.agent.queue_wait_s, "must be 0-10"),
        (c.agent.max_payload_bytes >= 64, "agent.max_payload_bytes", c.agent.max_payload_bytes, "must be >= 64"),
        (c.agent.deadletter_max_bytes >= 0, "agent.deadletter_max_bytes", c.agent.deadletter_max_bytes, "must be >= 0"),
        (c.agent.max_batch_windows >= 1, "agent.max_batch_windows", c.agent.max_batch_windows, "must be >= 1"),
        (c.agent.shutdown_timeout_s >= 0, "agent.shutdown_timeout_s", c.agent.shutdown_timeout_s, "must be >= 0"),
        (c.agent.max_devices >= 1, "agent.max_devices", c.agent.max_devices, "must be >= 1"),
        (c.agent.device_idle_evict_s > 0, "agent.device_idle_evict_s", c.agent.device_idle_evict_s, "must be > 0"),
        (0 < c.mqtt.port < 65536, "mqtt.port", c.mqtt.port, "must be 1-65535"),
        (c.mqtt.keepalive_s >= 1, "mqtt.keepalive_s", c.mqtt.keepalive_s, "must be >= 1"),
        (0 < c.mqtt.reconnect_min_s <= c.mqtt.reconnect_max_s, "mqtt.reconnect_min_s", c.mqtt.reconnect_min_s,
         f"must be > 0 and <= mqtt.reconnect_max_s ({c.mqtt.reconnect_max_s})"),
        (bool(c.mqtt.topic_prefix) and "+" not in c.mqtt.topic_prefix and "#" not in c.mqtt.topic_prefix,
         "mqtt.topic_prefix", c.mqtt.topic_prefix, "must be non-empty without MQTT wildcards"),
        (bool(c.kafka.bootstrap), "kafka.bootstrap", c.kafka.bootstrap, "must not be empty"),
        (c.kafka.batch_rows >= 1, "kafka.batch_rows", c.kafka.batch_rows, "must be >= 1"),
        (0 < c.kafka.backoff_min_s <= c.kafka.backoff_max_s, "kafka.backoff_min_s", c.kafka.backoff_min_s,
         f"must be > 0 and <= kafka.backoff_max_s ({c.kafka.backoff_max_s})"),
        (c.model.threads >= 1, "model.threads", c.model.threads, "must be >= 1"),
        (c.windows.gap_periods >= 1, "windows.gap_periods", c.windows.gap_periods, "must be >= 1"),
        (c.windows.max_clock_skew_s >= 0, "windows.max_clock_skew_s", c.windows.max_clock_skew_s, "must be >= 0"),
        (1 <= c.decision.k <= c.decision.n, "decision.k", c.decision.k, f"must be 1 <= k <= n ({c.decision.n})"),
        (c.outbox.max_bytes >= 4096, "outbox.max_bytes", c.outbox.max_bytes, "must be >= 4096"),
        (c.telemetry.every_n_windows >= 0, "telemetry.every_n_windows", c.telemetry.every_n_windows, "must be >= 0 (0: off)"),
        (c.telemetry.anomaly_context_windows >= 0, "telemetry.anomaly_context_windows", c.telemetry.anomaly_context_windows,
         "must be >= 0"),
        (0 <= c.metrics.port < 65536, "metrics.port", c.metrics.port, "must be 0-65535 (0: off)"),
        (not c.updates.enabled or bool(c.updates.trusted_keys_dir), "updates.trusted_keys_dir", c.updates.trusted_keys_dir,
         "must name a folder of public keys when updates.enabled"),
        (c.updates.shadow_min_windows >= 1, "updates.shadow_min_windows", c.updates.shadow_min_windows, "must be >= 1"),
        (c.updates.shadow_rate_factor >= 1, "updates.shadow_rate_factor", c.updates.shadow_rate_factor, "must be >= 1"),
        (c.updates.shadow_latency_factor >= 1, "updates.shadow_latency_factor", c.updates.shadow_latency_factor, "must be >= 1"),
        (c.updates.shadow_prediction_tolerance >= 1, "updates.shadow_prediction_tolerance",
         c.updates.shadow_prediction_tolerance, "must be >= 1"),
        (0 < c.updates.shadow_baseline_floor <= 1, "updates.shadow_baseline_floor", c.updates.shadow_baseline_floor,
         "must be in (0, 1]"),
        (c.updates.max_artifact_bytes >= 1, "updates.max_artifact_bytes", c.updates.max_artifact_bytes, "must be >= 1"),
        (c.updates.max_download_bytes >= 1, "updates.max_download_bytes", c.updates.max_download_bytes, "must be >= 1"),
        (c.updates.command_max_age_s > 0, "updates.command_max_age_s", c.updates.command_max_age_s, "must be > 0"),
        (c.updates.report_interval_s >= 0, "updates.report_interval_s", c.updates.report_interval_s, "must be >= 0 (0: off)"),
    ]
    checks += [(False, f"adaptive.{key}", value, rule) for key, value, rule in c.adaptive.problems()]
    checks += [(False, f"sensor_health.{key}", value, rule) for key, value, rule in c.sensor_health.problems()]
    checks += [(False, f"escalation.{key}", value, rule) for key, value, rule in c.escalation.problems()]
    for ok, key, value, rule in checks:
        if not ok:
            raise ConfigError(f"{c.source}: '{key}' = {value!r} {rule}")
    check_host_ports(c.kafka.bootstrap, "kafka.bootstrap", c.source)
    for device in c.decision.device_thresholds:
        if not NAME_RE.match(device):
            raise ConfigError(f"{c.source}: 'decision.device_thresholds.{device}' is not a valid device id")
