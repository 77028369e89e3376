"""The measured side of ``bench/agent_throughput.py``: one consumer per process, started by the
parent under ``taskset -c <core>`` and told what to do by a JSON spec file.

Kinds:
- ``subscriber``: a bare paho-mqtt client (QoS 1, persistent session, the agent's client
  settings) whose ``on_message`` only ``json.loads`` the payload and counts the readings in it.
- ``agent``: :class:`edge.agent.Agent` with its configured ONNX model, exactly as deployed.
- ``agent-torch``: the same agent with a :class:`TorchScorer` (the default model rebuilt in
  PyTorch from the ONNX weights) instead of onnxruntime; only for the footprint comparison.

The main thread polls the consumer's reading count every 5 ms and records wall time and the
process's CPU time (all threads, ``os.times``) at the first reading seen and at the last change;
the result (rate, CPU per reading, losses, ``VmHWM``) is written to the spec's ``result`` file.
Nothing here runs at import.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_S = 0.005


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def vm_hwm_kib() -> int:
    """Peak resident set size of this process so far (``VmHWM`` in /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def watch(progress: Callable[[], tuple[int, int]], done: Callable[[tuple[int, int]], bool], *, stall_s: float,
          first_timeout_s: float = 120.0) -> dict[str, float]:
    """Poll ``progress() -> (readings, windows)`` until ``done`` or no change for ``stall_s``.

    Returns readings and wall / CPU seconds between the first poll that saw a reading and the
    poll that saw the last change."""
    started = time.monotonic()
    last = progress()
    first: tuple[float, float, int] | None = None
    t_change, cpu_change = time.perf_counter(), cpu_s()
    while True:
        time.sleep(POLL_S)
        now = progress()
        t = time.perf_counter()
        if now != last:
            last, t_change, cpu_change = now, t, cpu_s()
            if first is None and now[0] > 0:
                first = (t, cpu_change, now[0])
        if done(last):
            break
        if first is None and time.monotonic() - started > first_timeout_s:
            raise RuntimeError(f"no reading arrived within {first_timeout_s:.0f} s")
        if first is not None and t - t_change > stall_s:
            break
    assert first is not None
    return {"readings": float(last[0]), "windows": float(last[1]), "measured_readings": float(last[0] - first[2]),
            "wall_s": t_change - first[0], "cpu_s": cpu_change - first[1]}


def run_subscriber(spec: dict[str, Any]) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    loads = json.loads
    count = [0, 0]  # readings, messages

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        data = loads(msg.payload)
        batch = data.get("readings")
        count[0] += 1 if batch is None else len(batch)
        count[1] += 1

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe(spec["subscription"], qos=1)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec["client_id"], clean_session=False, protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(spec["host"], spec["port"], keepalive=30)
    client.loop_start()
    try:
        out = watch(lambda: (count[0], 0), lambda p: p[0] >= spec["expected_readings"], stall_s=spec["stall_s"])
    finally:
        client.disconnect()
        client.loop_stop()
    out["messages"] = count[1]
    return out


def run_agent(spec: dict[str, Any], scorer: object | None = None) -> dict[str, Any]:
    from edge.agent import Agent
    from edge.config import load_config

    agent = Agent(load_config(spec["config"], env={}), scorer=scorer)  # type: ignore[arg-type]  # a Scorer by shape (bench.torch_twin) or None
    agent.start()
    m = agent.metrics
    if spec.get("ready_file"):
        assert agent.intake is not None
        if not agent.intake.subscribed.wait(60):
            raise RuntimeError("the agent did not subscribe within 60 s")
        Path(spec["ready_file"]).write_text("ready\n")

    def value(counter: Any) -> int:
        return int(counter._value.get())  # the counter itself: cheaper than a registry collect every 5 ms

    try:
        out = watch(lambda: (value(m.readings_received), value(m.windows_scored)),
                    lambda p: p[0] >= spec["expected_readings"] and p[1] >= spec["expected_windows"], stall_s=spec["stall_s"])
        out.update(messages=value(m.messages_received), queue_dropped=value(m.queue_dropped), anomalies=value(m.anomalies),
                   worker_errors=agent.worker_errors)
    finally:
        out_rows = agent.stop(spec.get("stop_timeout_s", 30.0))
    out["outbox_rows_left"] = out_rows
    return out


class TorchScorer:
    """The default model as a torch module on one thread: the agent's ``Scorer`` protocol."""

    def __init__(self, model_dir: Path, twin: Path) -> None:
        import torch

        from bench.torch_twin import load_twin

        torch.set_num_threads(1)
        self.manifest, self._module = load_twin(model_dir, twin)
        self._torch = torch

    def score(self, windows: Any) -> tuple[Any, Any]:
        with self._torch.inference_mode():
            score, channel_scores = self._module(self._torch.from_numpy(windows))
        return score.numpy(), channel_scores.numpy()


def main(spec_path: str) -> int:
    import logging

    logging.basicConfig(level=logging.ERROR, format="%(asctime)s child %(levelname)s %(name)s %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    kind = spec["kind"]
    if kind == "subscriber":
        result = run_subscriber(spec)
    elif kind == "agent":
        result = run_agent(spec)
    elif kind == "agent-torch":
        result = run_agent(spec, TorchScorer(Path(spec["model"]), Path(spec["twin"])))
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    result.update(kind=kind, vm_hwm_kib=vm_hwm_kib(), affinity=sorted(os.sched_getaffinity(0)),
                  onnxruntime_loaded="onnxruntime" in sys.modules, torch_loaded="torch" in sys.modules)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
