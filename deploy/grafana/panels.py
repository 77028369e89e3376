"""The panels of edgewatch's four dashboards, row by row; generate.py turns them into Grafana JSON.

Metric names are the agent's (edge/metrics.py, ``edgewatch_agent_*``), the processor's
(cloud/processor/metrics.py, ``edgewatch_processor_*``) and the recording rules of
deploy/prometheus/edgewatch.rules.yml (``edgewatch:*``). Every expr here is run against a real
Prometheus by tests/cloud/test_grafana.py and must return at least one series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

AGENT = 'job="edgewatch-agent", site=~"$site"'
ONE = 'job="edgewatch-agent", instance=~"$instance"'
PROC = 'job="edgewatch-processor", instance=~"$processor"'
DEV = f'{ONE}, device_id=~"$device"'
RI = "$__rate_interval"


@dataclass(frozen=True)
class Q:
    """One Prometheus query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = ""  # "" (time series), "table" (instant) or "heatmap" (buckets by le)


@dataclass(frozen=True)
class P:
    """One panel: kind (stat, timeseries, table, heatmap, bargauge), title, queries, unit, size."""

    kind: str
    title: str
    queries: Sequence[Q]
    unit: str = "short"
    width: int = 8
    height: int = 8
    description: str = ""
    stack: bool = False
    thresholds: Sequence[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    decimals: int | None = None
    show_name: bool = False  # stat: show the series name (legend) instead of its value
    threshold_lines: bool = False  # timeseries: draw the thresholds as dashed lines


Rows = list[tuple[str, list[P]]]
RED_AT_1 = [(None, "green"), (1, "red")]
BURN = [(None, "green"), (1, "orange"), (10, "red")]  # alert-budget burn: on budget, 10x (EdgewatchDeviceBurningAlertBudget)
BURN_HELP = ("Each device's recent share of windows over its own threshold (last ~1000 windows) divided by "
             "adaptive.target_rate: 1 is on budget, above 10 for 30 m fires EdgewatchDeviceBurningAlertBudget")


def _per_model(metric: str) -> str:
    """``metric`` (a rate by instance) with the agent's model version attached from the model info."""
    return f"{metric} * on (instance) group_left (name, version) edgewatch_agent_model_info{{{AGENT}}}"


def fleet_rows() -> Rows:
    return [
        ("Fleet", [
            P("stat", "Agents up", [Q(f"sum(up{{{AGENT}}})")], width=4, height=4, thresholds=[(None, "red"), (1, "green")]),
            P("stat", "Agents down", [Q(f"count(up{{{AGENT}}}) - sum(up{{{AGENT}}})")], width=4, height=4, thresholds=RED_AT_1),
            P("stat", "Readings / s", [Q(f"sum(rate(edgewatch_agent_readings_received_total{{{AGENT}}}[{RI}]))")], unit="ops",
              width=4, height=4),
            P("stat", "Anomalies (1 h)", [Q(f"sum(increase(edgewatch_agent_anomalies_total{{{AGENT}}}[1h]))")], width=4, height=4,
              decimals=0),
            P("stat", "Outbox backlog", [Q(f"sum(edgewatch_agent_outbox_rows{{{AGENT}}})")], width=4, height=4,
              thresholds=[(None, "green"), (1000, "orange"), (100000, "red")], description="Rows waiting on the devices for Kafka"),
            P("stat", "Dead-lettered (1 h)", [Q(f"sum(increase(edgewatch_agent_payloads_rejected_total{{{AGENT}}}[1h]))")],
              width=4, height=4, decimals=0, thresholds=RED_AT_1),
        ]),
        ("Traffic and anomalies", [
            P("timeseries", "Anomaly rate by agent (5 m)", [Q('edgewatch:agent_anomaly_rate:5m{site=~"$site"}', "{{instance}}")],
              unit="ops", description="Recording rule edgewatch:agent_anomaly_rate:5m; the anomaly-spike alert compares it "
                                      "with its last hour"),
            P("timeseries", "Readings by agent", [Q(f"sum by (instance) (rate(edgewatch_agent_readings_received_total{{{AGENT}}}[{RI}]))",
                                                     "{{instance}}")], unit="ops"),
            P("timeseries", "Anomalies by site", [Q(f"sum by (site) (rate(edgewatch_agent_anomalies_total{{{AGENT}}}[{RI}]))",
                                                    "{{site}}")], unit="ops", stack=True),
        ]),
        ("Adaptive thresholds", [
            P("stat", "Devices warming up", [Q(f"sum(edgewatch_agent_device_warming{{{AGENT}}})")], width=4, decimals=0,
              description="Devices still learning their own threshold (adaptive.warmup_windows); meanwhile they decide on "
                          "a warm-up threshold, at least the model's"),
            P("stat", "Devices over 10x budget", [Q(f"count(edgewatch_agent_device_alert_budget_burn{{{AGENT}}} > 10) or vector(0)")],
              width=4, decimals=0, thresholds=RED_AT_1, description=BURN_HELP),
            P("bargauge", "Alert-budget burn, top 10 devices", [
                Q(f"topk(10, edgewatch_agent_device_alert_budget_burn{{{AGENT}}})", "{{device_id}} on {{instance}}", instant=True)],
              width=16, thresholds=BURN, description=BURN_HELP),
        ]),
        ("Health", [
            P("table", "Agents and their models", [Q(f"edgewatch_agent_model_info{{{AGENT}}}", fmt="table")], width=12),
            P("timeseries", "Outbox backlog by agent", [Q(f"sum by (instance) (edgewatch_agent_outbox_rows{{{AGENT}}})", "{{instance}}")],
              width=12),
            P("timeseries", "Dead-letter ratio (5 m)", [Q('edgewatch:agent_rejected_ratio:5m{site=~"$site"}', "{{instance}}")],
              unit="percentunit"),
            P("timeseries", "Broker connections", [
                Q(f"min by (instance) (edgewatch_agent_mqtt_connected{{{AGENT}}})", "{{instance}} MQTT"),
                Q(f"min by (instance) (edgewatch_agent_kafka_connected{{{AGENT}}})", "{{instance}} Kafka")]),
            P("timeseries", "Inference p99 (5 m)", [Q('edgewatch:agent_inference_p99_seconds:5m{site=~"$site"}', "{{instance}}")],
              unit="s"),
        ]),
    ]


def device_rows() -> Rows:
    return [
        ("Status", [
            P("stat", "Up", [Q(f"up{{{ONE}}}")], width=3, height=4, thresholds=[(None, "red"), (1, "green")]),
            P("stat", "Model", [Q(f"edgewatch_agent_model_info{{{ONE}}}", "{{name}} {{version}}")], width=5, height=4,
              show_name=True),
            P("stat", "Readings / s", [Q(f"sum(rate(edgewatch_agent_readings_received_total{{{ONE}}}[{RI}]))")], unit="ops",
              width=4, height=4),
            P("stat", "Windows / s", [Q(f"sum(rate(edgewatch_agent_windows_scored_total{{{ONE}}}[{RI}]))")], unit="ops",
              width=4, height=4),
            P("stat", "Anomalies (1 h)", [Q(f"sum(increase(edgewatch_agent_anomalies_total{{{ONE}}}[1h]))")], width=4, height=4,
              decimals=0),
            P("stat", "Outbox rows", [Q(f"sum(edgewatch_agent_outbox_rows{{{ONE}}})")], width=4, height=4,
              thresholds=[(None, "green"), (1000, "orange"), (100000, "red")]),
        ]),
        ("Intake", [
            P("timeseries", "MQTT messages and readings", [
                Q(f"sum(rate(edgewatch_agent_messages_received_total{{{ONE}}}[{RI}]))", "messages"),
                Q(f"sum(rate(edgewatch_agent_readings_received_total{{{ONE}}}[{RI}]))", "readings")], unit="ops", width=6),
            P("timeseries", "Rejected payloads by reason", [
                Q(f"sum by (reason) (rate(edgewatch_agent_payloads_rejected_total{{{ONE}}}[{RI}]))", "{{reason}}")],
              unit="ops", width=6, stack=True, description="Dead-lettered to edgewatch.deadletter with the reason"),
            P("timeseries", "Readings dropped by the windows", [
                Q(f"sum by (reason) (rate(edgewatch_agent_readings_dropped_total{{{ONE}}}[{RI}]))", "{{reason}}"),
                Q(f"sum(rate(edgewatch_agent_window_resets_total{{{ONE}}}[{RI}]))", "window resets (gaps)")], unit="ops", width=6),
            P("timeseries", "Intake queue", [
                Q(f"sum(edgewatch_agent_queue_depth_messages{{{ONE}}})", "depth"),
                Q(f"sum(rate(edgewatch_agent_queue_dropped_messages_total{{{ONE}}}[{RI}]))", "dropped / s")], width=6),
        ]),
        ("Inference and decisions", [
            P("timeseries", "Windows scored and anomalies", [
                Q(f"sum(rate(edgewatch_agent_windows_scored_total{{{ONE}}}[{RI}]))", "windows"),
                Q(f"sum(rate(edgewatch_agent_anomalies_total{{{ONE}}}[{RI}]))", "anomalies"),
                Q(f"sum(rate(edgewatch_agent_invalid_scores_total{{{ONE}}}[{RI}]))", "invalid scores")], unit="ops", width=6),
            P("timeseries", "Inference latency", [
                Q(f"histogram_quantile(0.5, sum by (le) (rate(edgewatch_agent_inference_seconds_bucket{{{ONE}}}[{RI}])))", "p50"),
                Q(f"histogram_quantile(0.99, sum by (le) (rate(edgewatch_agent_inference_seconds_bucket{{{ONE}}}[{RI}])))", "p99")],
              unit="s", width=6, description="One batched onnxruntime call (all windows ready in one tick)"),
            P("timeseries", "Windows per inference call", [
                Q(f"sum(rate(edgewatch_agent_inference_batch_windows_sum{{{ONE}}}[{RI}])) / "
                  f"sum(rate(edgewatch_agent_inference_batch_windows_count{{{ONE}}}[{RI}]))", "mean batch")], width=6),
            P("heatmap", "Score / threshold", [
                Q(f"sum by (le) (increase(edgewatch_agent_score_threshold_ratio_bucket{{{ONE}}}[{RI}]))", "{{le}}",
                  fmt="heatmap")], width=6,
              description="Above 1: over the threshold (before k-of-n debounce)"),
        ]),
        ("Adaptive thresholds", [
            P("timeseries", "Device thresholds (10 highest burn)", [
                Q(f"edgewatch_agent_device_threshold{{{DEV}}} and topk(10, edgewatch_agent_device_alert_budget_burn{{{DEV}}})",
                  "{{device_id}}")], width=8,
              description="Each device's threshold from the adaptive layer, in score units, for the 10 devices burning most of "
                          "their alert budget among those chosen in the device variable"),
            P("timeseries", "Alert-budget burn (10 highest)", [
                Q(f"topk(10, edgewatch_agent_device_alert_budget_burn{{{DEV}}})", "{{device_id}}")], width=8, thresholds=BURN,
              threshold_lines=True, description=BURN_HELP),
            P("bargauge", "Alert-budget burn by device", [
                Q(f"topk(20, edgewatch_agent_device_alert_budget_burn{{{DEV}}})", "{{device_id}}", instant=True)], width=8,
              thresholds=BURN, description=BURN_HELP + " (the 20 highest now)"),
            P("stat", "Devices warming up", [Q(f"sum(edgewatch_agent_device_warming{{{DEV}}})")], width=4, height=6, decimals=0,
              description="Devices still learning their own threshold; a warm-up that lasts 6 h fires EdgewatchDeviceStuckWarmingUp"),
            P("table", "Devices in warm-up", [Q(f"edgewatch_agent_device_warming{{{DEV}}} == 1", fmt="table")], width=20, height=6,
              description="Until adaptive.warmup_windows of their windows have taught their own threshold they decide on a "
                          "warm-up one: first adaptive.warmup_factor x the model's, then at least the model's"),
        ]),
        ("Outbox and forwarding", [
            P("timeseries", "Outbox", [Q(f"sum(edgewatch_agent_outbox_rows{{{ONE}}})", "rows")], width=6),
            P("timeseries", "Outbox bytes", [Q(f"sum(edgewatch_agent_outbox_bytes{{{ONE}}})", "bytes")], unit="bytes", width=6),
            P("timeseries", "Forwarded to Kafka by kind", [
                Q(f"sum by (kind) (rate(edgewatch_agent_forwarded_messages_total{{{ONE}}}[{RI}]))", "{{kind}}")], unit="ops", width=6),
            P("timeseries", "Forward errors and shed rows", [
                Q(f"sum(rate(edgewatch_agent_forward_errors_total{{{ONE}}}[{RI}]))", "forward errors"),
                Q(f"sum by (kind) (rate(edgewatch_agent_outbox_shed_rows_total{{{ONE}}}[{RI}]))", "shed {{kind}}")],
              unit="ops", width=6),
            P("timeseries", "Broker connections", [
                Q(f"min(edgewatch_agent_mqtt_connected{{{ONE}}})", "MQTT"),
                Q(f"min(edgewatch_agent_kafka_connected{{{ONE}}})", "Kafka")], width=24, height=5),
        ]),
    ]


def stream_rows() -> Rows:
    return [
        ("Agents to Kafka", [
            P("timeseries", "Forwarded by kind (fleet)", [
                Q(f"sum by (kind) (rate(edgewatch_agent_forwarded_messages_total{{{AGENT}}}[{RI}]))", "{{kind}}")], unit="ops"),
            P("timeseries", "Forward errors by agent", [
                Q(f"sum by (instance) (rate(edgewatch_agent_forward_errors_total{{{AGENT}}}[{RI}]))", "{{instance}}")], unit="ops"),
            P("timeseries", "Outbox backlog by agent", [
                Q(f"sum by (instance) (edgewatch_agent_outbox_rows{{{AGENT}}})", "{{instance}}")]),
        ]),
        ("Processor", [
            P("stat", "Processors up", [Q('sum(up{job="edgewatch-processor"})')], width=6, height=4,
              thresholds=[(None, "red"), (1, "green")]),
            P("stat", "Consumer lag", [Q(f"sum(edgewatch_processor_lag_records{{{PROC}}})")], width=6, height=4,
              thresholds=[(None, "green"), (1000, "orange"), (10000, "red")]),
            P("stat", "Events / s", [Q(f"sum(rate(edgewatch_processor_events_consumed_total{{{PROC}}}[{RI}]))")], unit="ops",
              width=6, height=4),
            P("stat", "Open incidents", [Q(f"sum(edgewatch_processor_incidents_open{{{PROC}}})")], width=6, height=4),
            P("timeseries", "Events", [
                Q(f"sum(rate(edgewatch_processor_events_consumed_total{{{PROC}}}[{RI}]))", "consumed"),
                Q(f"sum(rate(edgewatch_processor_events_processed_total{{{PROC}}}[{RI}]))", "stored (first time)"),
                Q(f"sum(rate(edgewatch_processor_duplicates_dropped_total{{{PROC}}}[{RI}]))", "duplicates")], unit="ops"),
            P("timeseries", "Consumer lag by partition", [
                Q(f"sum by (partition) (edgewatch_processor_lag_records{{{PROC}}})", "partition {{partition}}"),
                Q("edgewatch:processor_lag_records", "{{instance}} total")]),
            P("timeseries", "Batch processing time", [
                Q(f"histogram_quantile(0.5, sum by (le) (rate(edgewatch_processor_processing_seconds_bucket{{{PROC}}}[{RI}])))", "p50"),
                Q(f"histogram_quantile(0.99, sum by (le) (rate(edgewatch_processor_processing_seconds_bucket{{{PROC}}}[{RI}])))",
                  "p99")], unit="s"),
            P("timeseries", "Late events", [
                Q(f"sum by (applied) (rate(edgewatch_processor_late_events_total{{{PROC}}}[{RI}]))", "applied={{applied}}")],
              unit="ops", description="Older than the partition watermark; applied=false: beyond the allowed lateness"),
            P("timeseries", "Dead letters", [
                Q(f"sum by (cause) (rate(edgewatch_processor_deadletters_total{{{PROC}}}[{RI}]))", "{{cause}}"),
                Q(f"sum(rate(edgewatch_processor_deadletters_published_total{{{PROC}}}[{RI}]))", "published")], unit="ops"),
            P("timeseries", "Store errors", [Q(f"sum(rate(edgewatch_processor_store_errors_total{{{PROC}}}[{RI}]))", "errors")],
              unit="ops", description="Failed store transactions; the batch is retried, offsets wait"),
        ]),
        ("Incidents and alerts", [
            P("timeseries", "Open incidents by kind", [
                Q(f"sum by (kind) (edgewatch_processor_incidents_open{{{PROC}}})", "{{kind}}")], width=8),
            P("timeseries", "Alerts emitted", [
                Q(f"sum by (kind, action) (rate(edgewatch_processor_alerts_emitted_total{{{PROC}}}[{RI}]))", "{{kind}} {{action}}")],
              unit="ops", width=8),
            P("timeseries", "Incidents opened by kind", [
                Q(f"sum by (kind) (increase(edgewatch_processor_incidents_opened_total{{{PROC}}}[1h]))", "{{kind}}")], width=8,
              description="Per hour: incident, fleet_incident, drift, sensor_fault, peer_outlier, device_silent (docs/fleet.md)"),
        ]),
    ]


def models_rows() -> Rows:
    anomalies = f"sum by (instance) (rate(edgewatch_agent_anomalies_total{{{AGENT}}}[{RI}]))"
    windows = f"sum by (instance) (rate(edgewatch_agent_windows_scored_total{{{AGENT}}}[{RI}]))"
    buckets = f"sum by (instance, le) (rate(edgewatch_agent_inference_seconds_bucket{{{AGENT}}}[{RI}]))"
    return [
        ("Models in use", [
            P("table", "Model per agent", [Q(f"edgewatch_agent_model_info{{{AGENT}}}", fmt="table")], width=9),
            P("table", "Candidate in shadow per agent", [Q(f"edgewatch_agent_shadow_model_info{{{AGENT}}}", fmt="table")], width=8,
              description="A signed update scores beside the live model before it is promoted or rejected; empty version: none"),
            P("bargauge", "Agents per model version", [
                Q(f"count by (name, version) (edgewatch_agent_model_info{{{AGENT}}})", "{{name}} {{version}}")], width=7),
        ]),
        ("Scoring", [
            P("heatmap", "Score / threshold (fleet)", [
                Q(f"sum by (le) (increase(edgewatch_agent_score_threshold_ratio_bucket{{{AGENT}}}[{RI}]))", "{{le}}", fmt="heatmap")],
              description="Scores near or above 1 crowd the threshold; a shift of the whole mass is drift"),
            P("timeseries", "Windows over threshold by model version", [
                Q(f"sum by (name, version) ({_per_model(anomalies)}) / sum by (name, version) ({_per_model(windows)})",
                  "{{name}} {{version}}")], unit="percentunit"),
            P("timeseries", "Inference p99 by model version", [
                Q(f"histogram_quantile(0.99, sum by (le, name, version) ({_per_model(buckets)}))", "{{name}} {{version}}")],
              unit="s"),
        ]),
        ("Drift and updates", [
            P("timeseries", "Incident, fleet and drift alerts opened", [
                Q(f'sum by (kind) (increase(edgewatch_processor_alerts_emitted_total{{{PROC}, action="open"}}[1h]))', "{{kind}}")],
              width=8, description="Drift alerts start a retraining run (edgewatch retrain --on-drift)"),
            P("timeseries", "Model updates by outcome", [
                Q(f"sum by (action) (increase(edgewatch_agent_model_updates_total{{{AGENT}}}[1h]))", "{{action}}")], width=8,
              description="downloaded, refused (signature, compatibility), shadow_started, promoted, rejected (failed shadow), "
                          "rolled_back, loaded"),
            P("timeseries", "Invalid scores by agent", [
                Q(f"sum by (instance) (rate(edgewatch_agent_invalid_scores_total{{{AGENT}}}[{RI}]))", "{{instance}}")],
              unit="ops", width=8, description="Non-finite model outputs: a broken model, or inputs far outside training"),
        ]),
    ]
