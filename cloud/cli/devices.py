"""``edgewatch devices retire DEVICE_ID | unretire DEVICE_ID | retired``: devices decommissioned on purpose.

A retired device opens no ``device_silent`` or ``peer_outlier`` incident, and one it has open closes at the fleet
watch's next look at it (its agent's next report, the next peer tick). Kept in the processor's store
(``retired_devices``), which the fleet watch reads every second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from edge.cliutil import EXIT_FAILURE, EXIT_OK, add_flag
from edge.contract import ConfigError
from edge.contract._fields import NAME_RE


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "devices", help="retire devices decommissioned on purpose (no silence or peer alerts)",
        description="Retire a device that was decommissioned on purpose, so it stops alerting as silent or as a peer "
                    "outlier, or bring it back; stored in the processor's store (the [store] section of its config).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    retire = actions.add_parser("retire", help="stop a device alerting")
    retire.add_argument("device_id")
    retire.add_argument("--reason", default="", help="why (kept with it)")
    unretire = actions.add_parser("unretire", help="let a retired device alert again")
    unretire.add_argument("device_id")
    ls = actions.add_parser("retired", help="the retired devices")
    for action in (retire, unretire, ls):
        add_flag(action, "--config", help="processor config (TOML) naming the store; required unless EDGEWATCH_STORE__* "
                                          "variables name it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cloud.cli.incidents import existing_store
    from cloud.fleetwatch import state

    device: str = getattr(args, "device_id", "")
    if device and not NAME_RE.match(device):
        raise ConfigError(f"{device!r} is not a device id (1-128 characters of A-Z a-z 0-9 _ . : -)")
    _, store, where = existing_store(args.config, "devices")
    try:
        if args.action == "retire":
            done = state.retire(store, device, time.time(), args.reason[:256])
            print(f"{device} retired" if done else f"{device} was retired already")
            return EXIT_OK
        if args.action == "unretire":
            if not state.unretire(store, device):
                print(f"{device} is not retired")
                return EXIT_FAILURE
            print(f"{device} unretired")
            return EXIT_OK
        rows = state.retired(store)
        for d, (at, reason) in sorted(rows.items()):
            print(f"{d}  retired {dt.datetime.fromtimestamp(at, dt.UTC):%Y-%m-%d %H:%M:%S}Z  {reason}")
        if not rows:
            print(f"no retired devices in the {where} store")
        return EXIT_OK
    finally:
        store.close()
