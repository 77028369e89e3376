"""Kafka ACLs for the secure profile: what each edgewatch client may do, in one place.

``deploy/kafka/secure.properties`` runs the StandardAuthorizer (KRaft) with
``allow.everyone.if.no.acl.found=false``: a client that is not a super user can touch only what an
ACL names. :func:`grants` lists the ACLs of each role, literal names only (no prefixes, no
wildcards), built from the topics and groups in the processor's config (:class:`Resources`):

- ``agent``: Write, Describe and Create (what ``kafka-acls --producer`` gives) on the anomalies,
  telemetry, status, dead-letter and escalations topics. The agent dead-letters malformed readings
  through its outbox (``kafka.deadletter_topic``); without Write there, one bad reading would hold every row
  behind it. Create lets it auto-create a missing topic of its own (the status topic on a first
  status). No Read anywhere, no group: an agent can neither read the anomalies nor write alerts.
- ``processor``: Read and Describe on the anomalies (its consumer group), telemetry (the archive's
  group), escalations (the escalation thread's group) and status topics (``edgewatch incidents
  --wait-s`` reads it without a group); Read on those groups (join, fetch and commit offsets); Write,
  Describe and Create on the alerts and dead-letter topics.
- ``retrain``: Read and Describe on the alerts topic, Read on the trigger's group.

The idempotent producers (agent and processor) need no IdempotentWrite on the cluster: since
Kafka 3.0 (KIP-679) Write on a topic is enough to obtain a producer id. :func:`apply` creates the
ACLs through an admin connection (a super user or a principal with Alter on the cluster) and
returns when the broker it talks to enforces them. Creating an ACL that exists is a no-op, so
applying again after adding an agent is safe. Nothing here removes ACLs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cloud.processor.config import ArchiveSection, EscalationSection, ProcessorConfig, ProcessorKafkaSection
from cloud.retrain.config import TriggerSection
from edge.config import KafkaSection
from edge.contract import BrokerUnavailable, ConfigError
from edge.kafka_security import KafkaSecurity, client_kwargs

Role = Literal["agent", "processor", "retrain"]
Operation = Literal["Read", "Write", "Describe", "Create"]
ResourceKind = Literal["topic", "group"]
ROLES: tuple[Role, ...] = ("agent", "processor", "retrain")
PRODUCE: tuple[Operation, ...] = ("Write", "Describe", "Create")
CONSUME: tuple[Operation, ...] = ("Read", "Describe")
OPERATIONS: dict[str, Operation] = {"READ": "Read", "WRITE": "Write", "DESCRIBE": "Describe", "CREATE": "Create"}


@dataclass(frozen=True)
class Resources:
    """The topic and group names the ACLs name; the defaults are those of the agent's, the processor's
    and the retraining trigger's configs."""

    anomalies_topic: str = ProcessorKafkaSection.anomalies_topic
    telemetry_topic: str = ProcessorKafkaSection.telemetry_topic
    status_topic: str = KafkaSection.status_topic
    alerts_topic: str = ProcessorKafkaSection.alerts_topic
    deadletter_topic: str = ProcessorKafkaSection.deadletter_topic
    processor_group: str = ProcessorKafkaSection.group_id
    archive_group: str = ArchiveSection.group_id
    retrain_group: str = TriggerSection.group_id
    escalations_topic: str = ProcessorKafkaSection.escalations_topic
    escalation_group: str = EscalationSection.group_id

    @classmethod
    def of(cls, cfg: ProcessorConfig, *, status_topic: str = KafkaSection.status_topic,
           retrain_group: str = TriggerSection.group_id) -> Resources:
        """The names a processor config uses (the agents' topics must be the same; status is theirs alone)."""
        k = cfg.kafka
        return cls(k.anomalies_topic, k.telemetry_topic, status_topic, k.alerts_topic, k.deadletter_topic, k.group_id,
                   cfg.archive.group_id, retrain_group, k.escalations_topic, cfg.escalation.group_id)


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL: ``principal`` may do ``operation`` on the literal ``kind`` named ``name``, from any host."""

    principal: str
    operation: Operation
    kind: ResourceKind
    name: str

    def __str__(self) -> str:
        return f"allow {self.principal} {self.operation} on {self.kind} {self.name}"


def principal(name: str) -> str:
    """``agent-gw1`` -> ``User:agent-gw1`` (the SCRAM user name, or a certificate's CN); ``User:...`` stays."""
    text = name.strip().removeprefix("User:")
    if not text or "*" in text:
        raise ConfigError(f"Kafka principal {name!r} must be a user name, without wildcards")
    return f"User:{text}"


def grants(role: Role, name: str, res: Resources = Resources()) -> list[Grant]:
    """The ACLs of one client of ``role`` logging in as ``name``; see the module docstring."""
    user = principal(name)
    topics: list[tuple[tuple[Operation, ...], str]]
    groups: list[str]
    if role == "agent":
        topics = [(PRODUCE, t) for t in (res.anomalies_topic, res.telemetry_topic, res.status_topic, res.deadletter_topic,
                                         res.escalations_topic)]
        groups = []
    elif role == "processor":
        topics = [(CONSUME, t) for t in (res.anomalies_topic, res.telemetry_topic, res.status_topic, res.escalations_topic)]
        topics += [(PRODUCE, t) for t in (res.alerts_topic, res.deadletter_topic)]
        groups = [res.processor_group, res.archive_group, res.escalation_group]
    elif role == "retrain":
        topics, groups = [(CONSUME, res.alerts_topic)], [res.retrain_group]
    else:
        raise ConfigError(f"Kafka ACL role {role!r}: known roles are {', '.join(ROLES)}")
    out = [Grant(user, op, "topic", topic) for ops, topic in topics for op in ops]
    return out + [Grant(user, "Read", "group", g) for g in groups]


def _acl(grant: Grant) -> Any:
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType

    kind = ResourceType.TOPIC if grant.kind == "topic" else ResourceType.GROUP
    return ACL(principal=grant.principal, host="*", operation=ACLOperation[grant.operation.upper()],
               permission_type=ACLPermissionType.ALLOW, resource_pattern=ResourcePattern(kind, grant.name))


def _grant(acl: Any) -> Grant:
    kind: ResourceKind = "topic" if acl.resource_pattern.resource_type.name == "TOPIC" else "group"
    return Grant(acl.principal, OPERATIONS[acl.operation.name], kind, acl.resource_pattern.resource_name)


def apply(bootstrap: str, wanted: Iterable[Grant], security: KafkaSecurity, *, timeout_s: float = 30.0) -> list[Grant]:
    """Create ``wanted`` (duplicates are no-ops) as the admin ``security`` logs in, then wait until the
    broker lists every one of them (it enforces what it lists). Returns the grants.

    Blocks up to about ``timeout_s``; raises :class:`BrokerUnavailable` naming each refused ACL and the
    error (``ClusterAuthorizationFailedError``: the admin user is not a super user), or when the
    broker has not listed them in time."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    todo = list(dict.fromkeys(wanted))
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="edgewatch-acls", **client_kwargs(security))
    except KafkaError as exc:
        who = security.username or "anonymous"
        raise BrokerUnavailable(f"kafka at {bootstrap}: cannot connect as {who} to create ACLs: {exc!r}") from exc
    try:
        result = admin.create_acls([_acl(g) for g in todo])
        if result["failed"]:
            raise BrokerUnavailable(f"kafka at {bootstrap} refused {len(result['failed'])} of {len(todo)} ACLs as "
                                    f"{security.username or 'anonymous'}: {sorted({repr(e) for e in result['failed']})}")
        deadline = time.monotonic() + timeout_s
        while missing := _unlisted(todo, listed(admin)):
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"kafka at {bootstrap} does not list {len(missing)} created ACLs after {timeout_s:g} s, "
                                        f"first: {missing[0]}")
            time.sleep(0.1)
    finally:
        admin.close()
    return todo


def _unlisted(todo: list[Grant], enforced: set[Grant]) -> list[Grant]:
    return [g for g in todo if g not in enforced]


def listed(admin: Any) -> set[Grant]:
    """Every literal ALLOW topic or group ACL the broker enforces (through a ``KafkaAdminClient``)."""
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePatternFilter, ResourceType

    out: set[Grant] = set()
    for kind in (ResourceType.TOPIC, ResourceType.GROUP):
        pattern = ResourcePatternFilter(kind, None, ACLResourcePatternType.LITERAL)
        acls, _ = admin.describe_acls(ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ALLOW, pattern))
        out.update(_grant(a) for a in acls if a.operation.name in OPERATIONS)
    return out


def plan(roles: Sequence[tuple[Role, str]], res: Resources) -> list[Grant]:
    """The grants of every ``(role, user name)`` pair, in order, without duplicates."""
    return list(dict.fromkeys(g for role, name in roles for g in grants(role, name, res)))
