"""``edgewatch incidents list | show ID | label ID --true-positive|--false-positive|--new-normal``: the operator's
view of the store. ``--new-normal`` also sends the incident's agent a signed command to rebaseline the device
(:mod:`cloud.commands`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_FAILURE, EXIT_OK, add_flag
from edge.contract import ConfigError
from edge.contract._fields import NAME_RE
from edge.contract.alert import INCIDENT_KINDS

STORE_ENV = "EDGEWATCH_STORE__"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "incidents", help="list, show and label incidents in the processor's store",
        description="Read the incident store the processor writes (the [store] section of its config) and record an "
                    "operator's verdict; labels are kept with the incident for retraining and evaluation.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="incidents, newest first")
    ls.add_argument("--open", action="store_true", help="only incidents still open")
    ls.add_argument("--kind", choices=INCIDENT_KINDS, help="only this kind")
    ls.add_argument("--site", help="only this site")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    queue = actions.add_parser(
        "queue", help="escalated windows to label, largest edge/cloud disagreement first",
        description="The labelling queue: unlabelled windows the agents escalated ([escalation] in both configs), ordered "
                    "by |edge score / threshold - cloud score / threshold|, with the cloud's verdict. Label the window "
                    "(ESCALATION) or the incident holding it (INCIDENT) with 'incidents label ID'.")
    queue.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    queue.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="one incident with its events")
    show.add_argument("incident_id")
    label = actions.add_parser(
        "label", help="record whether an incident was real, or make it the device's new normal",
        description="Record an operator's verdict. --new-normal also sends the agent that reported the incident a "
                    "command, signed with --key (edgewatch keys generate; the agent trusts its .pub in "
                    "updates.trusted_keys_dir), over MQTT: the agent restarts the device's adaptive warm-up, so its "
                    "threshold learns the device's behaviour from now on, and reports it on the status topic. The "
                    "agent refuses the command unsigned, forged, older than its updates.command_max_age_s or "
                    "replayed (docs/agent.md, \"New normal\").")
    label.add_argument("incident_id")
    verdict = label.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--true-positive", dest="label", action="store_const", const="true_positive",
                         help="a real fault")
    verdict.add_argument("--false-positive", dest="label", action="store_const", const="false_positive",
                         help="not a fault")
    verdict.add_argument("--new-normal", dest="label", action="store_const", const="new_normal",
                         help="a real change the device keeps: rebaseline the device on its agent")

    def flag(name: str, **kw: Any) -> None:
        add_flag(label, name, env_prefix="INCIDENTS_", **kw)

    flag("--key", help="private key (PEM) that signs the --new-normal command; required with --new-normal")
    flag("--agent", help="agent to send the command to (default: the agent named by the incident's latest event)")
    flag("--mqtt-host", default="127.0.0.1", help="MQTT broker the agents use (--new-normal)")
    flag("--mqtt-port", type=int, default=1883, help="MQTT port (--new-normal)")
    flag("--mqtt-prefix", default="edgewatch", help="the agents' mqtt.topic_prefix (--new-normal)")
    flag("--mqtt-username", help="MQTT user (--new-normal); the password only from EDGEWATCH_INCIDENTS_MQTT_PASSWORD")
    flag("--mqtt-tls-ca-file", help="CA file for an MQTT broker on TLS (--new-normal)")
    flag("--wait-s", type=float, default=0.0, help="wait this long for the agent's status on Kafka (the [kafka] of "
                                                   "--config); 0: do not wait (--new-normal)")
    flag("--status-topic", default="edgewatch.status", help="the agents' kafka.status_topic (--wait-s)")
    for action in (ls, queue, show, label):
        add_flag(action, "--config", help="processor config (TOML) naming the store; required unless EDGEWATCH_STORE__* "
                                          "variables name it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cloud.keys import load_private_key

    key = None
    if args.action == "label" and args.label == "new_normal":
        if not args.key:
            raise ConfigError("incidents label --new-normal signs a command to the agent: pass --key PRIVATE_KEY.pem (or "
                              "set EDGEWATCH_INCIDENTS_KEY), the key whose .pub the agents hold in updates.trusted_keys_dir")
        if args.agent is not None and not NAME_RE.match(args.agent):
            raise ConfigError(f"--agent {args.agent!r} is not an agent id (1-128 characters of A-Z a-z 0-9 _ . : -)")
        key = load_private_key(Path(args.key))
    config, store, where = existing_store(args.config, "incidents")
    try:
        if args.action == "list":
            rows = store.incidents(kind=args.kind, site=args.site, open_only=args.open, limit=1_000_000)
            rows = sorted(rows, key=lambda r: (r.opened_at, r.incident_id), reverse=True)[: args.limit]
            for r in rows:
                if args.json:
                    print(json.dumps(_doc(r)))
                else:
                    state = "open" if r.closed_at is None else f"closed {_ts(r.closed_at)}"
                    subject = r.device_id or f"{r.site} ({len(r.device_ids)} devices)"
                    print(f"{r.incident_id}  {r.kind:<14} {subject:<24} opened {_ts(r.opened_at)}  {state:<27} "
                          f"events={r.event_count:<5} label={r.label or '-'}")
            if not rows and not args.json:
                print(f"no incidents in the {where} store")
            return EXIT_OK
        if args.action == "queue":
            return _queue(store, args, config.incidents.window_s)
        incident = store.incident(args.incident_id)
        if incident is None and args.action == "label" and key is None and _label_escalation(store, args):
            return EXIT_OK
        if incident is None:
            print(f"no incident {args.incident_id}")
            return EXIT_FAILURE
        if key is not None:
            return _new_normal(args, config, store, incident, key)
        if args.action == "label":
            store.label_incident(args.incident_id, args.label, time.time())
            print(f"{args.incident_id} labelled {args.label}")
            return EXIT_OK
        print(json.dumps(_doc(incident), indent=2))
        end = incident.closed_at if incident.closed_at is not None else float("inf")
        start = incident.opened_at - config.incidents.window_s
        for device in incident.device_ids if incident.kind != "drift" else ():
            for e in store.events_between(device, start, end, limit=200):
                print(f"  {_ts(e['window_end'])}  {device}  score={e['score']:.3f} threshold={e['threshold']:.3f} "
                      f"model={e['model_name']}:{e['model_version']} event={e['event_id']}{' late' if e['late'] else ''}")
        return EXIT_OK
    finally:
        store.close()


def existing_store(config_path: str | None, command: str) -> tuple[Any, Any, str]:
    """(config, store, where) of the processor's store named by ``--config`` or the environment; never creates one:
    :class:`ConfigError` when none is named or the SQLite file is not there."""
    from cloud.processor.backends import open_store
    from cloud.processor.config import load_config

    if not config_path and not any(var.startswith(STORE_ENV) for var in os.environ):
        raise ConfigError(f"{command}: no store configured; pass --config cloud.toml (the processor's config, whose [store] "
                          f"section names the store), or set EDGEWATCH_CONFIG, or {STORE_ENV}BACKEND with "
                          f"{STORE_ENV}SQLITE_PATH or {STORE_ENV}POSTGRES_DSN")
    config = load_config(Path(config_path) if config_path else None)
    where = "sqlite " + str(Path(config.store.sqlite_path).resolve()) if config.store.backend == "sqlite" else "postgres"
    if config.store.backend == "sqlite" and not Path(config.store.sqlite_path).is_file():
        raise ConfigError(f"{config_path or 'environment'}: store.sqlite_path = {config.store.sqlite_path!r}: no incident store "
                          f"at {where.removeprefix('sqlite ')} (a relative path is read from the current folder); "
                          "the processor creates it when it first runs")
    return config, open_store(config.store), where


def _queue(store: Any, args: argparse.Namespace, window_s: float) -> int:
    from cloud.processor.verdicts import queue

    rows = queue(store, args.limit, window_s)
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['escalation_id']}  {r['device_id']:<20} {_ts(r['window_end'])}  edge={r['edge_ratio']:.2f} "
                  f"cloud={r['cloud_ratio']:.2f} {r['verdict']:<9} disagreement={r['disagreement']:.2f} "
                  f"incident={r['incident_id'] or '-'}")
    if not rows and not args.json:
        print("no unlabelled escalated windows")
    return EXIT_OK


def _label_escalation(store: Any, args: argparse.Namespace) -> bool:
    from cloud.processor.verdicts import label_escalation

    if not label_escalation(store, args.incident_id, args.label, time.time()):
        return False
    print(f"escalated window {args.incident_id} labelled {args.label}")
    return True


def _new_normal(args: argparse.Namespace, config: Any, store: Any, incident: Any, key: Any) -> int:
    """Sign and publish the command, label the incident, and with ``--wait-s`` wait for the agent's status."""
    from cloud.commands import StatusWatch, new_normal_command, publish_command, sign_command

    if incident.kind != "incident":
        raise ConfigError(f"incidents label {incident.incident_id} --new-normal: a {incident.kind} is not one device's "
                          "incident; label the incidents of the devices that changed")
    agent = args.agent or _agent_of(store, incident, config.incidents.window_s)
    if not agent:
        raise ConfigError(f"incidents label {incident.incident_id} --new-normal: no event of the incident names its agent; "
                          "pass --agent AGENT_ID")
    command = sign_command(new_normal_command(agent_id=agent, device_id=incident.device_id,
                                              incident_id=incident.incident_id, issued_at=time.time()), key)
    watch = StatusWatch(config.kafka.bootstrap, config.kafka, args.status_topic) if args.wait_s > 0 else None
    try:
        topic = publish_command(command, host=args.mqtt_host, port=args.mqtt_port, prefix=args.mqtt_prefix,
                                username=args.mqtt_username or None,
                                password=os.environ.get("EDGEWATCH_INCIDENTS_MQTT_PASSWORD") or None,
                                tls_ca_file=args.mqtt_tls_ca_file or None)
        store.label_incident(incident.incident_id, "new_normal", time.time())
        print(f"sent new_normal for device {incident.device_id} to agent {agent} on {topic} "
              f"(command {command.command_id}, key {command.signature.key_id if command.signature else '-'})")
        print(f"{incident.incident_id} labelled new_normal")
        status = watch.wait(command.command_id, args.wait_s) if watch is not None else None
    finally:
        if watch is not None:
            watch.close()
    if watch is None:
        return EXIT_OK
    if status is None:
        print(f"no status from agent {agent} on {args.status_topic} within {args.wait_s:g} s")
        return EXIT_FAILURE
    print(f"agent {status.agent_id}: {status.action} {status.device_id}: {status.reason}")
    return EXIT_OK if status.action == "rebaselined" else EXIT_FAILURE


def _agent_of(store: Any, incident: Any, window_s: float) -> str:
    """The agent named by the incident's latest stored event ('' when none is stored)."""
    events = store.events_between(incident.device_id, incident.opened_at - window_s, incident.last_event_at, limit=1000)
    return str(events[-1].get("agent_id", "")) if events else ""


def _doc(r: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(r)
    d["device_ids"] = list(r.device_ids)
    return d


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
