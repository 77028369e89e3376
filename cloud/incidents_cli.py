"""``edgewatch incidents list | show ID | label ID --true-positive|--false-positive``: the operator's view of the store."""

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
    ls.add_argument("--kind", choices=["incident", "fleet_incident", "drift"], help="only this kind")
    ls.add_argument("--site", help="only this site")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="one incident with its events")
    show.add_argument("incident_id")
    label = actions.add_parser("label", help="record whether an incident was real")
    label.add_argument("incident_id")
    verdict = label.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--true-positive", dest="label", action="store_const", const="true_positive")
    verdict.add_argument("--false-positive", dest="label", action="store_const", const="false_positive")
    for action in (ls, show, label):
        add_flag(action, "--config", help="processor config (TOML) naming the store; required unless EDGEWATCH_STORE__* "
                                          "variables name it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cloud.processor.backends import open_store
    from cloud.processor.config import load_config

    if not args.config and not any(var.startswith(STORE_ENV) for var in os.environ):
        raise ConfigError("incidents: no store configured; pass --config cloud.toml (the processor's config, whose [store] "
                          f"section names the store), or set EDGEWATCH_CONFIG, or {STORE_ENV}BACKEND with "
                          f"{STORE_ENV}SQLITE_PATH or {STORE_ENV}POSTGRES_DSN")
    config = load_config(Path(args.config) if args.config else None)
    where = "sqlite " + str(Path(config.store.sqlite_path).resolve()) if config.store.backend == "sqlite" else "postgres"
    if config.store.backend == "sqlite" and not Path(config.store.sqlite_path).is_file():
        raise ConfigError(f"{args.config or 'environment'}: store.sqlite_path = {config.store.sqlite_path!r}: no incident store "
                          f"at {where.removeprefix('sqlite ')} (a relative path is read from the current folder); "
                          "the processor creates it when it first runs")
    store = open_store(config.store)
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
        incident = store.incident(args.incident_id)
        if incident is None:
            print(f"no incident {args.incident_id}")
            return EXIT_FAILURE
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


def _doc(r: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(r)
    d["device_ids"] = list(r.device_ids)
    return d


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
