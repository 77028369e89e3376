"""Edge agent throughput, CPU, footprint and latency on one core, against a bare paho subscriber.

Starts its own local stack (Mosquitto + Kafka, ``localdev.stack.LocalStack``) and pins the brokers,
the publisher and this script to the other cores; every measured consumer runs alone in a child
process under ``taskset -c <core>`` (``bench/agent_bench_child.py``).

Throughput (per payload shape: one reading per message, and ``--batch`` readings per message):
each round, one publisher queues the same payloads at QoS 1 for two persistent MQTT sessions
created beforehand (the agent's and the subscriber's), then each consumer connects in turn and
drains its backlog; which goes first alternates by round. A consumer's rate is the readings it
processed (the agent: decoded, windowed, scored and decided) per wall second between
the first reading seen and the last; its CPU per reading is the process's CPU time (all threads)
over the same span. Losses are counted against what the publisher got acknowledged by the broker.
Draining a backlog measures what a consumer can sustain without the publisher's own speed
capping it; the broker keeps up to a million queued messages per session (``localdev.stack``), in
memory here (persistence off; otherwise the stack's configuration). A warm-up round comes first.

Live runs (footprint and latency): the agent at ``--latency-rate`` readings/s, one reading per
message, faults injected so windows fire, with the ONNX model and, interleaved, with a PyTorch
twin of it (``bench/torch_twin.py``): each run's peak RSS (``VmHWM``), and for every anomaly
event a Kafka consumer receives, the time from the publish of the reading that completed the
window to the event's arrival. The throughput table also shows the peak RSS while draining.

    .venv/bin/python bench/agent_throughput.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cloud.kafka_groups import subscribe
from localdev.stack import LocalStack, Mosquitto

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "agent_bench_child.py"


class MemoryMosquitto(Mosquitto):
    """The stack's Mosquitto (same queue and in-flight limits) without persistence: autosaving a
    backlog of 10^5 queued messages every second made the broker, not the consumer, the bottleneck."""

    def config_lines(self, data_dir: Path) -> list[str]:
        return [line for line in super().config_lines(data_dir) if not line.startswith(("persistence", "autosave"))]


def pin_process(pid: int, cpus: set[int]) -> None:
    """Set the affinity of every thread of ``pid`` (threads created later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, OSError):
            pass


def make_payloads(devices: int, steps: int, batch: int, *, faults_per_device: int = 0,
                  seed: int = 21) -> tuple[list[tuple[str, bytes]], Any]:
    """Interleaved ``(device, payload)`` of a synthetic fleet, ``batch`` readings per payload."""
    from edge.simulator import paced_steps, synthetic_fleet
    from edge.synth import FaultKind

    kinds: tuple[FaultKind, ...] = ("spike", "drift", "noise", "decorrelate") if faults_per_device else ()
    fleet = synthetic_fleet(devices, steps, seed=seed, faults_per_device=faults_per_device, kinds=kinds)
    return [(device, payload) for _step, messages in paced_steps(fleet, 0, batch) for device, payload, _n in messages], fleet


def register_session(port: int, client_id: str, subscription: str) -> None:
    """Create a persistent QoS 1 session on the broker, so messages queue for it while it is away."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, *_: c.subscribe(subscription, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError(f"could not subscribe {client_id} within 30 s")
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(port: int, prefix: str, payloads: list[tuple[str, bytes]], client_id: str) -> dict[str, int]:
    from edge.simulator import Publisher

    pub = Publisher("127.0.0.1", port, client_id=client_id, prefix=prefix)
    sent = failed = 0
    for device, payload in payloads:
        if pub.publish(device, payload):
            sent += 1
        else:
            failed += 1
    unacked = pub.close(120)
    return {"sent": sent - unacked, "failed": failed + unacked}


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.stack = LocalStack(work / "stack")
        self.stack.mosquitto = MemoryMosquitto(self.stack.state_dir, self.stack.mosquitto.port)
        self.core = args.core
        self.others = set(os.sched_getaffinity(0)) - {self.core} or {self.core}
        from edge.config import default_model_dir
        from edge.detector import load_manifest

        self.model_dir = args.model or default_model_dir()
        self.twin_difference = float("nan")
        self.manifest = load_manifest(self.model_dir)

    def start(self) -> None:
        os.sched_setaffinity(0, self.others)
        self.stack.start()
        for pid in (self.stack.mosquitto.pid, self.stack.kafka.pid):
            if pid:
                pin_process(pid, self.others)

    def windows_for(self, readings_per_device: int, devices: int) -> int:
        m = self.manifest
        return devices * ((readings_per_device - m.window_length) // m.stride + 1)

    def agent_config(self, name: str, prefix: str, client_id: str, topics: dict[str, str]) -> Path:
        path = self.work / f"{name}.toml"
        path.write_text(f"""
[agent]
id = "{name}"
[mqtt]
port = {self.stack.mqtt_port}
client_id = "{client_id}"
topic_prefix = "{prefix}"
[kafka]
bootstrap = "{self.stack.kafka_bootstrap}"
anomalies_topic = "{topics['anomalies']}"
telemetry_topic = "{topics['telemetry']}"
deadletter_topic = "{topics['deadletter']}"
[model]
path = "{self.model_dir}"
[outbox]
path = "{self.work / (name + '-outbox.sqlite')}"
[metrics]
port = 0
[sensor_health]
enabled = {str(not self.args.no_sensor_health).lower()}
""")
        return path

    def topics(self, tag: str) -> dict[str, str]:
        from localdev.stack import create_topics

        topics = {k: f"bench.{tag}.{k}" for k in ("anomalies", "telemetry", "deadletter")}
        create_topics(self.stack.kafka_bootstrap, list(topics.values()), 1)
        return topics

    def child(self, spec: dict[str, Any], *, wait: bool = True) -> Any:
        tag = uuid.uuid4().hex[:8]
        spec = {**spec, "result": str(self.work / f"result-{tag}.json"), "host": "127.0.0.1", "port": self.stack.mqtt_port}
        spec_path = self.work / f"spec-{tag}.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = ["taskset", "-c", str(self.core), sys.executable, str(CHILD), str(spec_path)]
        proc = subprocess.Popen(cmd, env=env, cwd=self.work)
        if not wait:
            return proc, Path(spec["result"])
        return self.finish(proc, Path(spec["result"]))

    @staticmethod
    def finish(proc: subprocess.Popen[bytes], result: Path, timeout_s: float = 900) -> dict[str, Any]:
        if proc.wait(timeout_s) != 0:
            raise RuntimeError(f"bench child failed with exit code {proc.returncode}")
        out: dict[str, Any] = json.loads(result.read_text())
        return out

    def drain_round(self, mode: str, payloads: list[tuple[str, bytes]], readings: int, windows: int, order: tuple[str, ...],
                    ) -> dict[str, dict[str, Any]]:
        """Queue ``payloads`` for each consumer's session, then let each drain its backlog in ``order``."""
        from edge.contract import readings_subscription

        tag = uuid.uuid4().hex[:8]
        prefix = f"bench{tag}"
        subscription = readings_subscription(prefix)
        ids = {kind: f"bench-{kind}-{tag}" for kind in order}
        for client_id in ids.values():
            register_session(self.stack.mqtt_port, client_id, subscription)
        per_payload = readings // len(payloads)
        sent = publish_all(self.stack.mqtt_port, prefix, payloads, f"bench-pub-{tag}")
        out: dict[str, dict[str, Any]] = {}
        for kind in order:
            spec: dict[str, Any] = {"kind": kind, "client_id": ids[kind], "subscription": subscription, "expected_readings": readings,
                                    "expected_windows": windows, "stall_s": 20.0, "model": str(self.model_dir),
                                    "twin": str(self.work / "twin.pt")}
            if kind.startswith("agent"):
                name = f"{kind}-{mode}-{tag}"
                spec["config"] = str(self.agent_config(name, prefix, ids[kind], self.topics(f"{name}")))
            r = self.child(spec)
            r["sent_readings"] = sent["sent"] * per_payload
            r["publish_failed"] = sent["failed"]
            r["lost"] = r["sent_readings"] - int(r["readings"])
            r["rate"] = r["measured_readings"] / r["wall_s"]
            r["cpu_us"] = 1e6 * r["cpu_s"] / r["measured_readings"]
            out[kind] = r
            print(f"  {mode:7s} {kind:11s} {r['rate']:9,.0f} readings/s  {r['cpu_us']:6.1f} us CPU/reading  "
                  f"lost {r['lost']:,} of {r['sent_readings']:,}  peak RSS {r['vm_hwm_kib'] / 1024:.0f} MiB", flush=True)
        return out

    def throughput(self, rounds: int) -> dict[str, list[dict[str, dict[str, Any]]]]:
        a = self.args
        results: dict[str, list[dict[str, dict[str, Any]]]] = {}
        shapes = {"single": (a.single_readings, 1), "batched": (a.batched_readings, a.batch)}
        for mode, (total, batch) in shapes.items():
            steps = total // a.devices // batch * batch
            payloads, _fleet = make_payloads(a.devices, steps, batch)
            readings, windows = steps * a.devices, self.windows_for(steps, a.devices)
            print(f"{mode}: {len(payloads):,} messages of {batch} reading(s), {readings:,} readings, {a.devices} devices", flush=True)
            results[mode] = []
            print("  warm-up round (not counted)", flush=True)
            warm_steps = len(payloads) // 4 // a.devices * batch
            self.drain_round(mode, payloads[: warm_steps // batch * a.devices], warm_steps * a.devices,
                             self.windows_for(warm_steps, a.devices), ("subscriber", "agent"))
            for i in range(rounds):
                order = ("subscriber", "agent") if i % 2 == 0 else ("agent", "subscriber")
                results[mode].append(self.drain_round(mode, payloads, readings, windows, order))
        return results

    def prepare_twin(self) -> None:
        """Rebuild the default model in torch from the ONNX weights, check it, save it for the children."""
        import numpy as np

        from bench.torch_twin import max_relative_difference, save_twin, twin_from_onnx
        from edge.synth import random_faults, simulate
        from models.zoo import DEFAULT_CONFIG

        twin = twin_from_onnx(self.model_dir, DEFAULT_CONFIG)
        rows, _ = simulate(3000, seed=5, faults=random_faults(3000, seed=6, count=4))
        windows = np.lib.stride_tricks.sliding_window_view(rows, self.manifest.window_length, axis=0)[::4].transpose(0, 2, 1)
        self.twin_difference = max_relative_difference(twin, self.model_dir, np.ascontiguousarray(windows, dtype=np.float32))
        if self.twin_difference > 1e-3:
            raise RuntimeError(f"the torch twin differs from onnxruntime by {self.twin_difference:.2g}")
        save_twin(twin, self.work / "twin.pt")

    def live(self, rounds: int, kinds: tuple[str, ...]) -> list[dict[str, dict[str, Any]]]:
        """Interleaved live runs at ``--latency-rate`` of each agent kind: latency and peak RSS."""
        a = self.args
        steps = int(a.latency_rate / a.devices * a.latency_seconds)
        payloads, fleet = make_payloads(a.devices, steps, 1, faults_per_device=max(1, steps // 400), seed=31)
        print(f"live: {a.latency_rate:,.0f} readings/s for {a.latency_seconds:.0f} s, {a.devices} devices, faults injected", flush=True)
        out = []
        for i in range(rounds):
            order = kinds if i % 2 == 0 else kinds[::-1]
            out.append({kind: self.live_run(kind, payloads, fleet, steps) for kind in order})
        return out

    def live_run(self, kind: str, payloads: list[tuple[str, bytes]], fleet: Any, steps: int) -> dict[str, Any]:
        """One agent live: publish paced, time each anomaly event from the publish of its window's
        last reading to its arrival at a Kafka consumer (a thread of this process, on the other cores)."""
        import threading

        from kafka import KafkaConsumer

        from edge.contract import decode_event
        from edge.simulator import Publisher

        a = self.args
        tag = uuid.uuid4().hex[:8]
        prefix, name = f"lat{tag}", f"{kind}-live-{tag}"
        step_hz = a.latency_rate / a.devices
        topics = self.topics(name)
        consumer = KafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, group_id=f"lat-{tag}",
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        subscribe(consumer, [topics["anomalies"]])
        assign_deadline = time.monotonic() + 120
        while not consumer.assignment():
            if time.monotonic() > assign_deadline:
                consumer.close()
                raise RuntimeError(f"the latency consumer got no partition of {topics['anomalies']} within 120 s")
            consumer.poll(timeout_ms=200)
        arrivals: dict[str, tuple[float, Any]] = {}
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    now = time.time()
                    for r in records:
                        e = decode_event(r.value)
                        arrivals.setdefault(e.event_id, (now, e))

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        ready = self.work / f"{name}.ready"
        spec = {"kind": kind, "config": str(self.agent_config(name, prefix, f"bench-{name}", topics)), "ready_file": str(ready),
                "expected_readings": steps * a.devices, "expected_windows": self.windows_for(steps, a.devices), "stall_s": 5.0,
                "model": str(self.model_dir), "twin": str(self.work / "twin.pt")}
        proc, result_path = self.child(spec, wait=False)
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the {kind} agent exited before it was ready")
            time.sleep(0.05)
        pub = Publisher("127.0.0.1", self.stack.mqtt_port, client_id=f"bench-pub-{tag}", prefix=prefix)
        published: dict[tuple[str, float], float] = {}
        ts = {d.device_id: d.ts for d in fleet}
        failed = 0
        started = time.monotonic()
        for i, (device, payload) in enumerate(payloads):
            step = i // a.devices
            delay = started + step / step_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            published[(device, float(ts[device][step]))] = time.time()
            failed += not pub.publish(device, payload)
        publish_s = time.monotonic() - started
        failed += pub.close(60)
        r = self.finish(proc, result_path)
        deadline = time.monotonic() + 60
        while len(arrivals) < r["anomalies"] and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        reader.join(5)
        consumer.close()
        # total, and split at the event's detected_at (the agent's clock when it decided; same host)
        splits = {"": [arr - published[(e.device_id, e.window_end)] for arr, e in arrivals.values()],
                  "detect_": [e.detected_at - published[(e.device_id, e.window_end)] for _arr, e in arrivals.values()],
                  "forward_": [arr - e.detected_at for arr, e in arrivals.values()]}
        for prefix_, values in splits.items():
            q = statistics.quantiles(values, n=100, method="inclusive") if len(values) >= 2 else [float("nan")] * 99
            r.update({f"{prefix_}p50": q[49], f"{prefix_}p99": q[98], f"{prefix_}max": max(values, default=float("nan"))})
        latencies = splits[""]
        r.update(publish_rate=len(payloads) / publish_s, events=len(latencies), sent_readings=len(payloads) - failed,
                 publish_failed=failed)
        r["lost"] = r["sent_readings"] - int(r["readings"])
        print(f"  live    {kind:11s} {r['publish_rate']:9,.0f} readings/s  latency p50 {r['p50'] * 1e3:5.0f} ms  "
              f"p99 {r['p99'] * 1e3:5.0f} ms (decided p50 {r['detect_p50'] * 1e3:.0f} ms)  {r['events']} events  "
              f"lost {r['lost']:,} of {r['sent_readings']:,}  "
              f"peak RSS {r['vm_hwm_kib'] / 1024:.0f} MiB", flush=True)
        return r


def median(rounds: list[dict[str, dict[str, Any]]], kind: str, key: str) -> float:
    return float(statistics.median(r[kind][key] for r in rounds))


def report(b: Bench, thr: dict[str, list[dict[str, dict[str, Any]]]], live: list[dict[str, dict[str, Any]]] | None,
           load: tuple[float, float]) -> str:
    a = b.args
    lines = [f"agent on core {b.core} (brokers, publisher, this script on {sorted(b.others)}); load average {load[0]:.1f} -> {load[1]:.1f} "
             f"on {os.cpu_count()} cores; medians of {a.rounds} interleaved rounds (range in brackets); model {b.manifest.name} "
             f"({b.manifest.family}{'' if b.manifest.members is None else f' x {len(b.manifest.members)}'})", "",
             "| payloads | consumer | readings/s | CPU us/reading | lost / sent (all rounds) | peak RSS "
             "| agent/subscriber rate | agent/subscriber CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, rounds in thr.items():
        ratios = [r["agent"]["rate"] / r["subscriber"]["rate"] for r in rounds]
        cpu_ratios = [r["agent"]["cpu_us"] / r["subscriber"]["cpu_us"] for r in rounds]
        label = "1 reading/msg" if mode == "single" else f"{a.batch} readings/msg"
        for kind in ("subscriber", "agent"):
            lost = sum(r[kind]["lost"] for r in rounds)
            sent = sum(r[kind]["sent_readings"] for r in rounds)
            extra = " | |"
            if kind == "agent":
                extra = (f" | **{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f}) target >= 0.85"
                         f" | **{statistics.median(cpu_ratios):.2f}** ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) target <= 1.25")
            lines.append(f"| {label} | {kind} | {median(rounds, kind, 'rate'):,.0f} | {median(rounds, kind, 'cpu_us'):.1f} | "
                         f"{lost:,} / {sent:,} | {median(rounds, kind, 'vm_hwm_kib') / 1024:.0f} MiB{extra} |")
    if live:
        lines += ["", f"live at {a.latency_rate:,.0f} readings/s, 1 reading/msg, {a.latency_seconds:.0f} s per run, faults injected; "
                      f"torch twin within {b.twin_difference:.1g} of onnxruntime", "",
                  "| agent scoring with | peak RSS (VmHWM) | latency p50 | latency p99 | of which publish -> decided p50 / p99 "
                  "| decided -> Kafka consumer p50 / p99 | events | lost / sent (all rounds) |",
                  "|---|---|---|---|---|---|---|---|"]

        def ms(kind: str, key: str) -> str:
            values = [r[kind][key] * 1e3 for r in live]
            return f"{statistics.median(values):.0f} ms" + (f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else "")

        for kind in live[0]:
            lost = sum(r[kind]["lost"] for r in live)
            sent = sum(r[kind]["sent_readings"] for r in live)
            lines.append(f"| {'onnxruntime' if kind == 'agent' else 'torch (twin)'} | {median(live, kind, 'vm_hwm_kib') / 1024:.0f} MiB | "
                         f"{ms(kind, 'p50')} | {ms(kind, 'p99')} | {ms(kind, 'detect_p50')} / {ms(kind, 'detect_p99')} | "
                         f"{ms(kind, 'forward_p50')} / {ms(kind, 'forward_p99')} | {sum(r[kind]['events'] for r in live)} | "
                         f"{lost:,} / {sent:,} |")
        if "agent-torch" in live[0]:
            onnx_mib = median(live, "agent", "vm_hwm_kib") / 1024
            torch_mib = median(live, "agent-torch", "vm_hwm_kib") / 1024
            lines.append(f"\nONNX / torch peak RSS: **{onnx_mib / torch_mib:.2f}** (target <= 0.33), ONNX agent {onnx_mib:.0f} MiB "
                         f"(target < 100 MiB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=(__doc__ or "").split("\n\n", 1)[1])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved throughput rounds per payload shape (default 5)")
    parser.add_argument("--core", type=int, default=0, help="the core the measured processes run on (default 0)")
    parser.add_argument("--devices", type=int, default=10, help="simulated devices (default 10)")
    parser.add_argument("--single-readings", type=int, default=40_000, help="readings per round, one per message (default 40000)")
    parser.add_argument("--batched-readings", type=int, default=400_000, help="readings per round, batched (default 400000)")
    parser.add_argument("--batch", type=int, default=40, help="readings per batched message (default 40)")
    parser.add_argument("--live-rounds", type=int, default=3, help="live rounds of each agent kind (latency, peak RSS; 0: skip)")
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="readings/s of the live runs (default 1000)")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="length of one live run (default 30)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch agent in the live runs")
    parser.add_argument("--model", type=Path, help="the artifact every agent runs (default: the shipped default model); "
                                                   "the torch twin exists only for the default model, so this implies --no-torch")
    parser.add_argument("--no-sensor-health", action="store_true", help="the agents run with [sensor_health] enabled = false")
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 rounds: a smoke run, not a measurement")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.single_readings, args.batched_readings = 2, 5000, 40_000
        args.live_rounds, args.latency_seconds = 1, 10.0
    if args.model is not None:
        args.no_torch = True
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the brokers are stopped
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgewatch-agent-bench-") as tmp:
        b = Bench(args, Path(tmp))
        b.start()
        try:
            kinds = ("agent",) if args.no_torch else ("agent", "agent-torch")
            if not args.no_torch:
                b.prepare_twin()
            thr = b.throughput(args.rounds) if args.rounds else {}
            live = b.live(args.live_rounds, kinds) if args.live_rounds else None
        finally:
            b.stack.stop()
    text = report(b, thr, live, (load0, os.getloadavg()[0]))
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({"throughput": thr, "live": live}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
