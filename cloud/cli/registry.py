"""``edgewatch registry list | show | register | promote | rollback | publish``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cloud.distribute import publish_model
from cloud.keys import load_private_key, sign_model_dir
from cloud.registry import Registry
from edge.cliutil import EXIT_OK, add_flag
from edge.contract import ConfigError

EXIT_REFUSED = 3  # register --archive: the backtest gate refused the candidate (as retrain's rejected)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "registry", help="model registry: list, show, register, promote, rollback, publish",
        description="The model registry: one folder per model name and version with model.onnx, manifest.json, "
                    "weights and a model card; stages candidate / production / archived. `publish` signs (with --key) "
                    "and announces a version to a device group over MQTT, retained, with the artifact in chunks.",
    )
    p.add_argument("action", choices=["list", "show", "register", "promote", "rollback", "publish"])
    p.add_argument("target", nargs="?", help="model name (show/promote/rollback/publish) or model folder (register)")
    p.add_argument("version", nargs="?", help="version (show/promote/publish; publish defaults to production)")

    def flag(name: str, **kw: Any) -> None:
        add_flag(p, name, env_prefix="REGISTRY_", **kw)

    flag("--root", default="registry", help="registry folder")
    flag("--group", default="default", help="device group to announce to (publish)")
    flag("--mqtt-host", default="127.0.0.1", help="MQTT broker (publish)")
    flag("--mqtt-port", type=int, default=1883, help="MQTT port (publish)")
    flag("--key", help="private key to sign with before publishing (publish)")
    flag("--archive", help="register: backtest the candidate and production on this telemetry archive first, write the "
                           "expected alert rate into the manifest, and refuse a candidate above --max-alert-ratio; labelled "
                           "incidents from --store (a processor TOML, a SQLite file or a PostgreSQL DSN) go in the model card")
    flag("--config", help="register --archive: agent TOML whose [decision] and [adaptive] decide (default: the agent's)")
    flag("--max-alert-ratio", type=float, default=2.0,
         help="register --archive: refuse a candidate whose median alerts per device-day exceed this x production's")
    flag("--force", action="store_true", help="register --archive: register a refused candidate anyway (prediction included)")
    flag("--prefix", default="edgewatch", help="the agents' mqtt.topic_prefix (publish)")
    flag("--wave", type=_wave, help="publish to this share of the group's agents, e.g. 10%%: a rollout in waves compared "
                                    "by the processor (docs/rollouts.md); needs --store")
    flag("--store", help="the processor's store: its config (TOML), a SQLite file or a PostgreSQL DSN (register --archive: "
                         "labelled incidents; publish --wave: the agents' reports and the rollouts)")
    p.set_defaults(func=run)


def _wave(text: str) -> float:
    from cloud.rollout.waves import parse_percent

    try:
        return parse_percent(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    reg = Registry(Path(args.root))
    if args.action != "register" and not reg.root.is_dir():  # register creates the registry; the others read one
        raise ConfigError(f"--root {args.root}: no registry there (no such folder; `registry register` creates one)")
    if args.action == "list":
        for name in reg.names():
            st = reg.stages(name)
            print(f"{name}: production={st.production or '-'} candidates={','.join(st.candidates) or '-'} "
                  f"archived={','.join(st.archived) or '-'} versions={','.join(reg.versions(name))}")
        return EXIT_OK
    if not args.target:
        raise ConfigError(f"registry {args.action} needs a model name (or a folder for register)")
    if args.action == "register":
        folder = Path(args.target)
        missing = [name for name in ("model.onnx", "manifest.json") if not (folder / name).is_file()]
        if missing:
            raise ConfigError(f"registry register {args.target}: not a model folder (no {' or '.join(missing)})"
                              if folder.is_dir() else f"registry register {args.target}: no such folder")
        if args.archive:
            return _register_backtested(reg, folder, args)
        m = reg.register(folder)
        print(f"registered {m.name} {m.version} as candidate")
    elif args.action == "show":
        version = args.version or reg.stages(args.target).production
        if version is None:
            raise ConfigError(f"{args.target} has no production version; name one")
        print(json.dumps(json.loads((reg.version_dir(args.target, version) / "model_card.json").read_text()), indent=2))
        print(json.dumps({"stages": vars(reg.stages(args.target))}, indent=2, default=str))
    elif args.action == "promote":
        if not args.version:
            raise ConfigError("registry promote needs NAME VERSION")
        print(f"{args.target}: production is now {reg.promote(args.target, args.version).production}")
    elif args.action == "rollback":
        print(f"{args.target}: production is now {reg.rollback(args.target).production}")
    else:
        path = reg.version_dir(args.target, args.version) if args.version else reg.production_dir(args.target)
        if args.key:
            sign_model_dir(path, load_private_key(Path(args.key)))
        if args.wave is not None:
            from cloud.cli.rollout import publish_wave_cli

            return publish_wave_cli(args, reg, path)
        a = publish_model(path, host=args.mqtt_host, port=args.mqtt_port, group=args.group, prefix=args.prefix)
        print(f"published {a.manifest.name} {a.manifest.version} to group {args.group}: {a.size} bytes in {len(a.chunk_sha256)} chunks")
    return EXIT_OK


def _register_backtested(reg: Registry, folder: Path, args: argparse.Namespace) -> int:
    """``register --archive``: the backtest gate (:mod:`cloud.backtest.gate`), then register with the prediction."""
    import sys

    from cloud.backtest.gate import alert_gate, labels_from, stamp
    from cloud.evaluate.agent_path import agent_config
    from edge.detector import load_manifest

    if args.max_alert_ratio <= 0:
        raise ConfigError(f"--max-alert-ratio {args.max_alert_ratio}: must be > 0")
    name = load_manifest(folder).name
    prod = reg.stages(name).production if reg.root.is_dir() else None
    outcome = alert_gate(folder, reg.version_dir(name, prod) if prod else None, archive=Path(args.archive),
                         config=agent_config(args.config), labels=labels_from(args.store),
                         max_ratio=args.max_alert_ratio, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if outcome.refusal is not None and not args.force:
        print(f"edgewatch: registry register refused: {outcome.refusal} (--force registers it anyway)", file=sys.stderr)
        return EXIT_REFUSED
    m = reg.register(folder, card={"backtest": outcome.card(forced=outcome.refusal is not None)})
    dropped = stamp(reg.version_dir(m.name, m.version), outcome.expected)
    e = outcome.expected
    print(f"registered {m.name} {m.version} as candidate; expected alerts per device-day p05/p50/p95 "
          f"{e.alerts_per_device_day['p05']:.3g}/{e.alerts_per_device_day['p50']:.3g}/{e.alerts_per_device_day['p95']:.3g} "
          f"over {e.devices} devices, {e.device_days:.1f} device-days"
          + (f"; FORCED past the gate: {outcome.refusal}" if outcome.refusal else "")
          + ("; its signature no longer covers the manifest: sign it again with `registry publish --key`" if dropped else ""))
    return EXIT_OK
