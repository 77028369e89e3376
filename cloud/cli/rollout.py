"""``edgewatch rollout status [NAME] | resume NAME | abort NAME``, and ``registry publish --wave``'s body."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from edge.cliutil import EXIT_OK, add_flag
from edge.contract import ConfigError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "rollout", help="rollouts in waves: status, resume, abort",
        description="Rollouts started by `registry publish NAME VERSION --wave P%%`, read from the processor's store. "
                    "status: each wave and its agents, the agents skipped and why, the cohorts' rates with their exposure, "
                    "and the decisions. resume: a paused rollout runs again, compared afresh from now. abort: the previous "
                    "version is announced again to the wave's agents (they swap it back without a trial). Broker and "
                    "registry come from the config's [rollout] section.",
    )
    p.add_argument("action", choices=["status", "resume", "abort"])
    p.add_argument("name", nargs="?", help="model name (status: all rollouts when absent)")
    add_flag(p, "--config", env_prefix="ROLLOUT_", help="processor config (TOML) naming the store and the [rollout] broker")
    p.set_defaults(func=run)


def _open(config_path: str | None) -> tuple[Any, Any]:
    from cloud.processor.backends import open_store
    from cloud.processor.config import load_config

    if not config_path and not any(v.startswith("EDGEWATCH_STORE__") for v in os.environ):
        raise ConfigError("no store configured: pass the processor's config (TOML) whose [store] section names the store")
    config = load_config(Path(config_path) if config_path else None)
    if config.store.backend == "sqlite" and not Path(config.store.sqlite_path).is_file():
        raise ConfigError(f"store.sqlite_path = {config.store.sqlite_path!r}: no store there (the processor creates it)")
    return config, open_store(config.store)


def publish_wave_cli(args: argparse.Namespace, reg: Any, path: Path) -> int:
    """``registry publish NAME VERSION --wave P%``: announce a wave; prints its agents and the skipped ones."""
    from cloud.processor.backends import open_store
    from cloud.retrain.sources import store_section
    from cloud.rollout import state
    from cloud.rollout.publish import Broker, publish_wave

    if not args.store:
        raise ConfigError("registry publish --wave needs --store: the processor's store (its config, a SQLite file or a "
                          "PostgreSQL DSN), where the agents' reports and the rollouts are")
    store = _open(args.store)[1] if args.store.endswith(".toml") else open_store(store_section(args.store))
    try:
        version = path.name
        ro = publish_wave(store, reg, Broker(args.mqtt_host, args.mqtt_port, args.prefix), name=args.target, version=version,
                          group=args.group, percent=args.wave)
        members = state.members(store, ro.rollout_id)
    finally:
        store.close()
    print(f"{ro.name} {ro.version} to group {ro.group}: state {ro.state}, waves {', '.join(f'{w:g}%' for w in ro.waves)}")
    for m in members:
        print(f"  {m.agent_id}: " + (f"skipped: {m.skipped}" if m.skipped else f"wave {m.wave:g}%"))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from cloud.registry import Registry
    from cloud.rollout import state
    from cloud.rollout.monitor import broker_of
    from cloud.rollout.publish import abort

    if args.action != "status" and not args.name:
        raise ConfigError(f"rollout {args.action} needs a model name")
    config, store = _open(args.config)
    try:
        found = state.rollouts(store, name=args.name)
        if args.action == "status":
            for ro in found:
                print(status_text(store, ro, config))
            if not found:
                print(f"no rollout{' of ' + args.name if args.name else ''} in the store")
            return EXIT_OK
        live = [ro for ro in found if ro.state in ("running", "paused")]
        if not live:
            raise ConfigError(f"no running or paused rollout of {args.name}")
        ro = live[-1]
        if args.action == "abort":
            agents = abort(store, Registry(Path(config.rollout.registry)), broker_of(config), ro)
            print(f"{ro.rollout_id} aborted: {ro.previous_version} announced again to {', '.join(agents) or 'no agent'}")
        else:
            state.resume(store, ro.rollout_id, time.time(), f"resumed by the operator at {ro.percent:g}%")
            print(f"{ro.rollout_id} running again at {ro.percent:g}%, compared from now")
    finally:
        store.close()
    return EXIT_OK


def status_text(store: Any, ro: Any, config: Any) -> str:
    """The report ``rollout status`` prints for one rollout."""
    from cloud.rollout import cohort, state

    r = config.rollout
    lines = [f"rollout {ro.rollout_id}: {ro.state} at {ro.percent:g}% (waves {', '.join(f'{w:g}%' for w in ro.waves) or '-'}), "
             f"previous version {ro.previous_version}, started {_ts(ro.started_at)}"]
    members = state.members(store, ro.rollout_id)
    for wave in ro.waves:
        agents = [m.agent_id for m in members if m.skipped is None and m.wave == wave]
        lines.append(f"  wave {wave:g}%: {', '.join(agents) or '-'}")
    for m in members:
        if m.skipped:
            lines.append(f"  skipped {m.agent_id}: {m.skipped}")
    c = cohort.compare(store, ro)
    for label, co in (("new", c.new), ("rest", c.rest)):
        rates = ", ".join(f"{k} {co.counts.get(k, 0)} ({co.rate(k):.3g}/device-hour)" for k in c.keys)
        lines.append(f"  cohort {label:<4} {len(co.agents)} agents, {co.device_hours:.4g} device-hours: {rates}")
    lines.append("  ratios: " + ", ".join(f"{k} {c.ratio(k):.2f}" for k in c.keys) + f" (pause above {r.max_ratio:g})")
    lines.append(f"  shadow: {len(c.rejected)} of {len(c.wave)} wave agents rejected the candidate"
                 + "".join(f"\n    {a}: {why}" for a, why in c.rejected.items()))
    verdict, reason = cohort.judge(c, min_exposure_device_hours=r.min_exposure_device_hours, max_ratio=r.max_ratio,
                                   max_shadow_rejection_share=r.max_shadow_rejection_share, min_events=r.min_events)
    lines.append(f"  now: {verdict}: {reason}")
    lines.append("  decisions:")
    lines += [f"    {_ts(d.at)}  {d.action:<6} {d.reason}" for d in state.decisions(store, ro.rollout_id)]
    return "\n".join(lines)


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
