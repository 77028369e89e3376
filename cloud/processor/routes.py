"""Alert routing by incident kind (``[alerts] routes``): a kind's alerts to a topic of their own and/or with labels.

``routes = { sensor_fault = ["topic=edgewatch.maintenance", "team=maintenance"] }``: each entry is ``name=value``;
``topic`` names the Kafka topic (default ``kafka.alerts_topic``), any other name is a label added to the alert's
``labels``. Routing happens when an alert is produced (:class:`~cloud.processor.alerts.OutboxPublisher`), so the
stored alert stays as it was decided and a changed route applies to alerts still unpublished. Pure; any thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from edge.contract import ConfigError
from edge.contract._fields import NAME_RE, dump_json
from edge.contract.alert import ALERT_KINDS

TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic names


@dataclass(frozen=True)
class Route:
    topic: str  # "" keeps kafka.alerts_topic
    labels: Mapping[str, str]


def parse_routes(routes: Mapping[str, tuple[str, ...]], where: str) -> dict[str, Route]:
    """The routes by kind; a :class:`ConfigError` names the dotted key of a bad kind or entry."""
    out: dict[str, Route] = {}
    for kind, entries in routes.items():
        key = f"alerts.routes.{kind}"
        if kind not in ALERT_KINDS:
            raise ConfigError(f"{where}: {key}: unknown incident kind {kind!r} (known: {', '.join(ALERT_KINDS)})")
        topic, labels = "", {}
        for entry in entries:
            name, sep, value = entry.partition("=")
            name, value = name.strip(), value.strip()
            if not sep:
                raise ConfigError(f"{where}: {key}: {entry!r} must look like topic=NAME or label=value")
            if name == "topic":
                if topic or not TOPIC_RE.match(value):
                    raise ConfigError(f"{where}: {key}: {entry!r}: one topic, a legal Kafka topic name")
                topic = value
            elif not NAME_RE.match(name) or name in labels or len(value) > 256:
                raise ConfigError(f"{where}: {key}: {entry!r}: a label is a unique name (A-Z a-z 0-9 _ . : -) = text "
                                  "of at most 256 characters")
            else:
                labels[name] = value
        out[kind] = Route(topic, labels)
    return out


class AlertRoutes:
    """Where an alert payload goes and what it carries: ``route(payload)`` gives (topic, payload)."""

    def __init__(self, routes: Mapping[str, Route], default_topic: str) -> None:
        self.routes = dict(routes)
        self.default_topic = default_topic

    def route(self, payload: str) -> tuple[str, str]:
        if not self.routes:
            return self.default_topic, payload
        doc = orjson.loads(payload)
        r = self.routes.get(doc["kind"])
        if r is None:
            return self.default_topic, payload
        if r.labels:
            doc["labels"] = {**doc.get("labels", {}), **r.labels}
            payload = dump_json(doc).decode()
        return r.topic or self.default_topic, payload

    def topics(self) -> set[str]:
        return {self.default_topic} | {r.topic for r in self.routes.values() if r.topic}
