"""``edgewatch acls --config cloud.toml --agents agent-gw1,agent-gw2 --processors processor``: the Kafka
ACLs of the secure profile (:mod:`cloud.kafka_acls`), created as the admin user."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cloud.kafka_acls import Resources, Role, apply, plan
from cloud.retrain.config import TriggerSection
from edge.cliutil import EXIT_OK, add_flag
from edge.config import KafkaSection
from edge.contract import ConfigError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "acls", help="grant agents, processors and the retraining trigger their Kafka ACLs (secure profile)",
        description="Create the ACLs a broker with the StandardAuthorizer (deploy/kafka/secure.properties) needs: agents "
                    "may only write the anomalies, telemetry, status and dead-letter topics; processors read the "
                    "anomalies, telemetry and status topics in their groups and write alerts and dead letters; the "
                    "retraining trigger reads alerts in its group. Topic and group names come from --config (the "
                    "processor's); it connects with that file's [kafka] keys, so log in as an admin (super) user: "
                    "EDGEWATCH_KAFKA__USERNAME=admin EDGEWATCH_KAFKA__PASSWORD=... Existing ACLs are kept; running it "
                    "again (after adding an agent) is safe. Names are SCRAM users or certificate CNs.",
    )
    add_flag(p, "--config", env_prefix="ACLS_", help="processor config (TOML): topics, groups, bootstrap and TLS/SASL keys")
    add_flag(p, "--agents", default="", env_prefix="ACLS_", help="comma-separated agent user names")
    add_flag(p, "--processors", default="", env_prefix="ACLS_", help="comma-separated processor user names")
    add_flag(p, "--retrain", default="", env_prefix="ACLS_", help="comma-separated retraining-trigger user names")
    add_flag(p, "--status-topic", default=KafkaSection.status_topic, env_prefix="ACLS_", help="the agents' kafka.status_topic")
    add_flag(p, "--retrain-group", default=TriggerSection.group_id, env_prefix="ACLS_", help="the trigger's [trigger] group_id")
    p.add_argument("--dry-run", action="store_true", help="print the ACLs, do not connect")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cloud.processor.config import load_config

    config = load_config(Path(args.config) if args.config else None)
    named: dict[Role, str] = {"agent": args.agents, "processor": args.processors, "retrain": args.retrain}
    roles = [(role, n.strip()) for role, names in named.items() for n in names.split(",") if n.strip()]
    if not roles:
        raise ConfigError("acls needs at least one of --agents, --processors, --retrain")
    grants = plan(roles, Resources.of(config, status_topic=args.status_topic, retrain_group=args.retrain_group))
    if not args.dry_run:
        apply(config.kafka.bootstrap, grants, config.kafka)
    for grant in grants:
        print(grant)
    print(f"{len(grants)} ACLs {'to create' if args.dry_run else 'in force'} on {config.kafka.bootstrap}")
    return EXIT_OK
