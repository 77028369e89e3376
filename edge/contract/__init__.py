"""The wire contract: the one place that defines readings, anomaly events, alerts and model manifests.

Standard library only. Every decoder raises :class:`ContractError` (naming the field, the
value and the rule) and nothing else, whatever bytes it is given.
"""

from edge.contract.alert import Alert, decode_alert, encode_alert, make_alert_id, make_incident_id
from edge.contract.errors import (
    BrokerUnavailable,
    ConfigError,
    ContractError,
    EdgewatchError,
    ManifestError,
    ModelLoadError,
)
from edge.contract.event import AnomalyEvent, SensorFault, decode_event, encode_event, make_event_id
from edge.contract.manifest import (
    Calibration,
    Channel,
    ExpectedAlerts,
    Member,
    ModelManifest,
    Signature,
    canonical_bytes,
    decode_manifest,
    encode_manifest,
)
from edge.contract.reading import (
    Reading,
    decode_readings,
    device_from_topic,
    encode_readings,
    readings_subscription,
    readings_topic,
)
from edge.contract.samples import (
    DeadLetter,
    TelemetryWindow,
    decode_deadletter,
    decode_telemetry,
    encode_deadletter,
    encode_telemetry,
    make_deadletter,
    telemetry_from_window,
)

__all__ = [
    "Alert", "decode_alert", "encode_alert", "make_alert_id", "make_incident_id",
    "AnomalyEvent", "BrokerUnavailable", "Calibration", "Channel", "ConfigError", "ContractError",
    "EdgewatchError", "ExpectedAlerts", "ManifestError", "Member", "ModelLoadError", "ModelManifest", "Reading", "SensorFault", "Signature",
    "canonical_bytes", "decode_event", "decode_manifest", "decode_readings", "device_from_topic",
    "encode_event", "encode_manifest", "encode_readings", "make_event_id", "readings_subscription",
    "readings_topic",
    "DeadLetter", "TelemetryWindow", "decode_deadletter", "decode_telemetry", "encode_deadletter", "encode_telemetry",
    "make_deadletter", "telemetry_from_window",
]
