"""A hostile flood driven through the agent's Pipeline in a process of its own, for its RSS.

``python -m tests.edge.flood_rss [--ids 100000] [--limit-mb 32]`` runs rounds of one clock second:
each round, every known device sends its next reading (one payload), ``ids / rounds`` new device ids
send one valid reading each, and one payload of each other hostile kind comes too (a far-future
reading and a distant-past one on a known device's topic, an oversized payload, malformed JSON).
It prints one JSON line: RSS at the start and its peak above the start, the windows scored per
known device and the drop and reject counts. It stops early (``"aborted": true``) once RSS has
grown by more than ``--limit-mb``, so unbounded state fails fast instead of eating the machine.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from prometheus_client import CollectorRegistry

from edge.config import load_config
from edge.contract import Reading, encode_readings, readings_topic
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.pipeline import Pipeline
from tests.edge.agent_util import T0, TINY_MODEL, fleet_readings

KNOWN = 5
ROUNDS = 100


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--limit-mb", type=float, default=32.0)
    parser.add_argument("--idle-evict-s", type=float, default=30.0)
    args = parser.parse_args()
    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "flood", "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "1",
                                    "EDGEWATCH_AGENT__DEVICE_IDLE_EVICT_S": str(args.idle_evict_s)})
    now = [T0]
    metrics = AgentMetrics(CollectorRegistry())
    pipe = Pipeline(config, OnnxDetector.load(TINY_MODEL), metrics, clock=lambda: now[0])
    known = [fleet_readings(f"known-{k}", ROUNDS, seed=k) for k in range(KNOWN)]
    per_round = args.ids // ROUNDS
    values = known[0][0].values
    windows: Counter[bytes] = Counter()
    start = peak = 0
    aborted = False
    for i in range(ROUNDS):
        now[0] = T0 + i + 0.5
        batch = [Message(readings_topic(r.device_id), encode_readings([r]), now[0]) for r in (d[i] for d in known)]
        batch += [Message(readings_topic(f"new-{i}-{j}"), encode_readings([Reading(f"new-{i}-{j}", T0 + i, values)]), now[0])
                  for j in range(per_round)]
        batch += [Message(readings_topic("known-0"), encode_readings([Reading("known-0", T0 + i + 1e9, values)]), now[0]),
                  Message(readings_topic("known-1"), encode_readings([Reading("known-1", T0 - 1e6, values)]), now[0]),
                  Message(readings_topic("known-2"), b" " * (config.agent.max_payload_bytes + 1), now[0]),
                  Message(readings_topic("known-3"), b'{"schema": 1, "ts": ', now[0])]
        records = pipe.process(batch)
        windows.update(r.key for r in records if r.kind == "telemetry" and r.key is not None)
        if i == 0:
            start = rss_bytes()  # the model has scored (its arena allocated) and the first ids are in
        else:
            peak = max(peak, rss_bytes() - start)
        if peak > args.limit_mb * 2**20:
            aborted = True
            break

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels or None) or 0.0

    print(json.dumps({
        "aborted": aborted, "rounds": i + 1, "start_mb": start / 2**20, "peak_growth_mb": peak / 2**20,
        "windows": {key.decode(): n for key, n in windows.items()},
        "tracked": value("edgewatch_agent_devices_tracked"), "evicted": value("edgewatch_agent_devices_evicted_total"),
        "future": value("edgewatch_agent_readings_dropped_total", reason="future"),
        "past": value("edgewatch_agent_readings_dropped_total", reason="past"),
        "too_many_devices": value("edgewatch_agent_payloads_rejected_total", reason="too_many_devices"),
        "too_large": value("edgewatch_agent_payloads_rejected_total", reason="too_large"),
        "not_json": value("edgewatch_agent_payloads_rejected_total", reason="not_json"),
    }))


if __name__ == "__main__":
    main()
