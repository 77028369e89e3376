"""``edgewatch backtest``: replay the archive through a model as the agent decides, beside production."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_OK, add_flag
from edge.contract import ConfigError


def register(sub: Any) -> None:
    from edge.config_parse import parse_bool

    p: argparse.ArgumentParser = sub.add_parser(
        "backtest", help="replay archived telemetry through a model as the agent decides; alerts per device-day",
        description=textwrap.fill("Replay the processor's Parquet archive (--archive) through a model folder or a registered version, "
                    "per device, causally in time order, through the agent's own path: onnxruntime, the adaptive "
                    "decision layer (if enabled in --config) and k-of-n. Streams the archive one device-day at a time. "
                    "Given a registered name (and version), the production version is replayed too, side by side. "
                    "Prints a table per group and overall (alerts per device-day p05/p50/p95, incidents, window rate, "
                    "labelled true positives caught and false positives raised with --store), writes backtest.json and "
                    "alerts_per_day.png in --out. A range with no archived windows is a configuration error (exit 2).", 100),
        epilog="examples:\n  edgewatch backtest pump 1.3 --archive archive --since 7d\n"
               "  edgewatch backtest runs/candidate --archive archive --group-pattern '^(site\\d+)-' --store incidents.sqlite",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR_OR_NAME", help="a model folder (model.onnx + manifest.json) or a registered name")
    p.add_argument("version", nargs="?", metavar="VERSION", help="registered version (default: production)")

    def flag(name: str, **kw: Any) -> None:
        add_flag(p, name, env_prefix="BACKTEST_", **kw)

    flag("--archive", default="archive", help="telemetry archive folder (the processor's [archive] dir)")
    flag("--root", default="registry", help="model registry folder (for a name, and production beside a folder)")
    flag("--since", help="replay from: ISO 8601, Unix seconds, or a duration ago (30m, 12h, 7d)")
    flag("--until", help="replay until (same formats; default: the archive's end)")
    flag("--device", action="extend", type=_ids, metavar="ID[,ID...]", help="replay only these devices (repeatable)")
    flag("--group-pattern", help="group devices by the first capture group of this regex on the device id "
                                 "(no match: group 'other'; default: one group 'all')")
    flag("--store", help="incident store with operator labels: the processor's config (TOML), a SQLite file or a PostgreSQL DSN")
    flag("--config", help="agent TOML whose [decision] and [adaptive] decide (default: the agent's shipped defaults)")
    flag("--out", default="backtest", help="folder for backtest.json and alerts_per_day.png")
    flag("--progress", type=parse_bool, default=True, metavar="BOOL",
         help="devices done / total on stderr")
    p.set_defaults(func=run)


def _ids(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def group_by_pattern(pattern: str | None) -> Callable[[str], str]:
    """``--group-pattern``: the first capture group (the whole match without one); no match: ``other``."""
    if not pattern:
        return lambda device: "all"
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--group-pattern {pattern!r}: not a regular expression ({exc})") from None

    def group(device: str) -> str:
        m = regex.search(device)
        return "other" if m is None else (m.group(1) if regex.groups else m.group(0)) or "other"
    return group


def resolve(target: str, version: str | None, root: Path) -> tuple[Path, Path | None]:
    """The model folder to replay and production's folder beside it (None: none, or the same version)."""
    from cloud.registry import Registry
    from edge.detector import load_manifest

    reg = Registry(root)
    folder = Path(target)
    if version is None and (folder / "manifest.json").is_file():
        model_dir = folder
    else:
        if not reg.root.is_dir():
            raise ConfigError(f"{target}: not a model folder, and --root {root} is no registry")
        model_dir = reg.version_dir(target, version) if version else reg.production_dir(target)
    m = load_manifest(model_dir)
    prod = reg.stages(m.name).production if reg.root.is_dir() and (reg.root / m.name).is_dir() else None
    if prod is None or prod == m.version:
        return model_dir, None
    return model_dir, reg.version_dir(m.name, prod)


def run(args: argparse.Namespace) -> int:
    from cloud.backtest import backtest
    from cloud.backtest.gate import labels_from
    from cloud.backtest.report import table, write_json, write_plot
    from cloud.cli.retrain import parse_time
    from cloud.evaluate.agent_path import agent_config

    now = time.time()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since is not None and until is not None and until <= since:
        raise ConfigError(f"--until {args.until} is not after --since {args.since}")
    model_dir, prod_dir = resolve(args.model, args.version, Path(args.root))
    config = agent_config(args.config)
    labels = labels_from(args.store)
    group_of = group_by_pattern(args.group_pattern)
    results = []
    for what, path in (("model", model_dir), ("production", prod_dir)):
        if path is None:
            continue
        started = time.monotonic()
        shown = [started]

        def progress(done: int, total: int, what: str = what, started: float = started, shown: list[float] = shown) -> None:
            now = time.monotonic()
            if args.progress and (done == total or now - shown[0] >= 2.0):  # a line every 2 s at most, and the last
                shown[0] = now
                print(f"[backtest {what}] {done}/{total} devices ({now - started:.0f} s)", file=sys.stderr, flush=True)

        results.append(backtest(Path(args.archive), path, config=config, since=since, until=until, devices=args.device,
                                group_of=group_of, labels=labels, progress=progress))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(table(results))
    written = [write_json(out / "backtest.json", results, {"config": args.config, "group_pattern": args.group_pattern})]
    plot = write_plot(out / "alerts_per_day.png", results)
    print("wrote " + ", ".join(str(p) for p in [*written, plot] if p is not None)
          + ("" if plot else " (no plot: matplotlib is not installed)"))
    return EXIT_OK
