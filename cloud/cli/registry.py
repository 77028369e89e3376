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
    p.set_defaults(func=run)


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
        a = publish_model(path, host=args.mqtt_host, port=args.mqtt_port, group=args.group)
        print(f"published {a.manifest.name} {a.manifest.version} to group {args.group}: {a.size} bytes in {len(a.chunk_sha256)} chunks")
    return EXIT_OK
