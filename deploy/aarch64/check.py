"""Raspberry-Pi-class check: the edge agent as linux/aarch64 under qemu user-mode emulation.

For each emulated core (``-cpu cortex-a72``: Pi 4; ``-cpu cortex-a53``: Pi 3 / Zero 2 W), with
CPython 3.11 from Debian 12 arm64 and the ``edge`` extra's aarch64 wheels (see ``rootfs.py``):

1. Scores: ``score_windows.py`` scores the same windows (synthetic pump fleet with faults) with
   ``models/zoo/default`` natively and emulated. Fails if any window's decision (score against
   the manifest threshold) differs, or any score or channel score differs by more than
   ``RTOL`` of the window's score. x86-64 and aarch64 onnxruntime use different GEMM kernels, so
   the last bits of a float32 sum can differ; a difference beyond rounding is a failure.
2. End to end: the agent itself (``python3.11 -m edge.cli run``) consumes readings that the native
   simulator publishes to a loopback Mosquitto, scores them and forwards anomalies to Kafka (the
   native local stack). Fails unless every window is scored, the agent drains and exits 0 on
   SIGTERM, and the anomaly events on Kafka are the native agent's (same event ids, scores
   within ``RTOL``).

Prints windows per second and peak RSS per core next to native, and writes them as JSON
(``--json``). Emulated speed is qemu's, not a Pi's; the emulated peak RSS includes qemu itself.

Usage: ``check.sh`` (installs qemu-user-static and the arm64 architecture, then runs this).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rootfs

sys.path.insert(0, str(rootfs.REPO))  # cloud, edge and tests from this checkout

from edge.contract import decode_event  # noqa: E402
from edge.detector import load_manifest  # noqa: E402
from edge.synth import random_faults, simulate  # noqa: E402
from localdev.stack import LocalStack, free_port  # noqa: E402
from tests.kafka_util import consume, create_topic  # noqa: E402

log = logging.getLogger("aarch64-check")

REPO = rootfs.REPO
MODEL = REPO / "models" / "zoo" / "default"
SCORER = Path(__file__).resolve().parent / "score_windows.py"
CPUS = ("cortex-a72", "cortex-a53")
RTOL = 1e-5
DEVICES = 4
STEPS = 600  # readings per device for the agent run


def qemu_prefix(fs: rootfs.Rootfs, cpu: str | None) -> list[str]:
    if cpu is None:
        return [sys.executable]
    fs.set_cpu(cpu)
    return ["qemu-aarch64-static", "-cpu", cpu, "-L", str(fs.root), str(fs.python)]


def child_env(site: Path, fs: rootfs.Rootfs, cpu: str | None, home: Path) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "ORT_DISABLE_TELEMETRY": "1", "LANG": "C.UTF-8"}
    if cpu is not None:
        env["PYTHONPATH"] = f"{site}:{fs.deps}"
    return env


def make_windows(path: Path) -> np.ndarray:
    m = load_manifest(MODEL)
    out = []
    for device in range(DEVICES):
        values, _ = simulate(1000, seed=100 + device, faults=random_faults(1000, seed=100 + device, count=3))
        out += [values[i: i + m.window_length] for i in range(0, len(values) - m.window_length + 1, m.stride)]
    windows = np.stack(out).astype(np.float32)
    np.save(path, windows)
    return windows


def run_scorer(prefix: list[str], env: dict[str, str], windows: Path, out: Path) -> dict[str, Any]:
    done = subprocess.run([*prefix, str(SCORER), str(MODEL), str(windows), str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scorer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare_scores(native: Path, emulated: Path, threshold: float) -> tuple[list[str], float]:
    """Problems found (empty: same) and the largest score difference relative to the window's score."""
    a, b = np.load(native), np.load(emulated)
    problems = []
    scale = np.maximum(1.0, np.abs(a["score"]))
    rel = float(max(np.max(np.abs(a["score"] - b["score"]) / scale),
                    np.max(np.abs(a["channel_scores"] - b["channel_scores"]) / scale[:, None])))
    if a["score"].shape != b["score"].shape:
        return [f"shape {a['score'].shape} != {b['score'].shape}"], float("inf")
    flips = np.flatnonzero((a["score"] > threshold) != (b["score"] > threshold))
    if len(flips):
        problems.append(f"{len(flips)} windows decided differently (first: {flips[0]})")
    if not np.all(np.isfinite(b["score"])) or rel > RTOL:
        problems.append(f"scores differ by up to {rel:.3g} of the window score (allowed {RTOL:g})")
    return problems, rel


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def agent_config(work: Path, label: str, stack: LocalStack, metrics_port: int) -> Path:
    path = work / f"agent-{label}.toml"
    path.write_text(f"""[agent]
id = "pi-{label}"
[mqtt]
port = {stack.mqtt_port}
topic_prefix = "aarch64-{label}"
reconnect_min_s = 0.2
reconnect_max_s = 2
[kafka]
bootstrap = "{stack.kafka_bootstrap}"
anomalies_topic = "aarch64.{label}.anomalies"
telemetry_topic = "aarch64.{label}.telemetry"
deadletter_topic = "aarch64.{label}.deadletter"
backoff_min_s = 0.2
backoff_max_s = 2
[model]
path = "{MODEL}"
[outbox]
path = "{work / (label + '-outbox.sqlite')}"
[metrics]
port = {metrics_port}
""")
    return path


def wait(cond: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the agent exited with {proc.returncode}")
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_agent(label: str, prefix: list[str], env: dict[str, str], work: Path, stack: LocalStack) -> dict[str, Any]:
    """Start the agent, feed it from the native simulator, wait for every window, stop it; its events and figures."""
    m = load_manifest(MODEL)
    expected = DEVICES * ((STEPS - m.window_length) // m.stride + 1)
    for kind in ("anomalies", "telemetry", "deadletter"):
        create_topic(stack.kafka_bootstrap, f"aarch64.{label}.{kind}")
    port = free_port()
    config = agent_config(work, label, stack, port)
    log_file = (work / f"agent-{label}.log").open("wb")
    started = time.monotonic()
    agent = subprocess.Popen([*prefix, "-m", "edge.cli", "run", "--config", str(config)], env=env, cwd=work,
                             stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait(lambda: scrape(port).get("edgewatch_agent_mqtt_connected") == 1.0, 300, f"{label} agent to connect", agent)
        startup_s = time.monotonic() - started
        sim_start = time.monotonic()
        sim = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--port", str(stack.mqtt_port),
                              "--topic-prefix", f"aarch64-{label}", "--devices", str(DEVICES), "--rate", "0",
                              "--duration", str(STEPS), "--batch", "10", "--faults-per-device", "1", "--seed", "7",
                              "--truth", str(work / "truth.json")],
                             capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
        if sim.returncode != 0:
            raise RuntimeError(f"simulator failed: {sim.stderr[-2000:]}")
        wait(lambda: scrape(port)["edgewatch_agent_windows_scored_total"] >= expected, 600, f"{label}: {expected} windows scored",
             agent)
        elapsed = time.monotonic() - sim_start

        def drained() -> bool:
            s = scrape(port)
            return s["edgewatch_agent_outbox_rows"] == 0 and s['edgewatch_agent_forwarded_messages_total{kind="anomaly"}'] \
                == s["edgewatch_agent_anomalies_total"]

        wait(drained, 120, f"{label}: outbox drained to Kafka", agent)
        final = scrape(port)
        rss = peak_rss_mib(agent.pid)
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(120)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log_file.close()
    if rc != 0:
        raise RuntimeError(f"{label} agent exited with {rc} on SIGTERM; log: {work / f'agent-{label}.log'}")
    n_anomalies = int(final["edgewatch_agent_anomalies_total"])
    values = consume(stack.kafka_bootstrap, f"aarch64.{label}.anomalies", f"aarch64-check-{label}", n_anomalies, 60)
    events = {e.event_id: e for e in map(decode_event, values)}
    return {"windows": int(final["edgewatch_agent_windows_scored_total"]), "expected_windows": expected,
            "anomalies": n_anomalies, "events": events, "startup_s": startup_s,
            "windows_per_s": final["edgewatch_agent_windows_scored_total"] / elapsed, "peak_rss_mib": rss}


def compare_events(native: dict[str, Any], emulated: dict[str, Any]) -> list[str]:
    a, b = native["events"], emulated["events"]
    problems = []
    if emulated["windows"] != native["windows"]:
        problems.append(f"scored {emulated['windows']} windows, native {native['windows']}")
    if set(a) != set(b):
        problems.append(f"anomaly events differ: {len(set(a) - set(b))} only native, {len(set(b) - set(a))} only emulated")
    for eid in set(a) & set(b):
        if abs(a[eid].score - b[eid].score) > RTOL * max(1.0, abs(a[eid].score)):
            problems.append(f"event {eid}: score {b[eid].score!r} vs native {a[eid].score!r}")
            break
    if not a:
        problems.append("no anomaly events at all: the run proves nothing about forwarding")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description="Run the edge agent under qemu-aarch64 (Cortex-A72, A53) and compare with native.")
    p.add_argument("--cpus", default=",".join(CPUS), help="comma-separated qemu -cpu models")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="edgewatch-aarch64-"))
    fs, site, pins = rootfs.prepare(work)
    log.info("prepared root=%s deps=%s in %.0f s", fs.root, fs.deps, time.monotonic() - t0)
    windows_path = work / "windows.npy"
    windows = make_windows(windows_path)
    threshold = load_manifest(MODEL).threshold
    home = work / "home"
    home.mkdir()
    cpus = [c for c in args.cpus.split(",") if c]
    targets: list[str | None] = [None, *cpus]
    results: dict[str, dict[str, Any]] = {}
    failures = []
    for cpu in targets:
        label = cpu or "native"
        res = run_scorer(qemu_prefix(fs, cpu), child_env(site, fs, cpu, home), windows_path, work / f"{label}.npz")
        results[label] = {"score": res}
        if cpu is not None:
            problems, rel = compare_scores(work / "native.npz", work / f"{label}.npz", threshold)
            res["max_rel_diff"] = rel
            res["bitwise_equal"] = bool(np.array_equal(np.load(work / "native.npz")["score"], np.load(work / f"{label}.npz")["score"]))
            failures += [f"{label} scores: {msg}" for msg in problems]
        log.info("scored %s windows=%d windows_per_s=%.0f", label, len(windows), res["windows_per_s"])
    stack = LocalStack(work / "stack")
    stack.start()
    try:
        for cpu in targets:
            label = cpu or "native"
            res = run_agent(label, qemu_prefix(fs, cpu), child_env(site, fs, cpu, home), work, stack)
            results[label]["agent"] = res
            log.info("agent %s windows=%d anomalies=%d windows_per_s=%.1f peak_rss_mib=%.0f startup_s=%.1f", label, res["windows"],
                     res["anomalies"], res["windows_per_s"], res["peak_rss_mib"], res["startup_s"])
            if res["windows"] != res["expected_windows"]:
                failures.append(f"{label} agent scored {res['windows']} windows, expected {res['expected_windows']}")
            if cpu is not None:
                failures += [f"{label} agent: {msg}" for msg in compare_events(results["native"]["agent"], res)]
    finally:
        stack.stop()
    report(results, pins, time.monotonic() - t0, failures)
    if args.json:
        for r in results.values():
            r["agent"].pop("events", None)
        Path(args.json).write_text(json.dumps({"pins": pins, "results": results, "failures": failures}, indent=2) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def report(results: dict[str, dict[str, Any]], pins: list[str], total_s: float, failures: list[str]) -> None:
    print(f"\naarch64 check: {' '.join(pins)}; {total_s:.0f} s")
    print(f"{'target':<12} {'model w/s':>10} {'peak MiB':>9} {'max diff':>9} | {'agent w/s':>9} {'peak MiB':>9} {'start s':>8} "
          f"{'windows':>8} {'anomalies':>9}")
    for label, r in results.items():
        s, a = r["score"], r.get("agent", {})
        diff = "-" if "max_rel_diff" not in s else ("0" if s["bitwise_equal"] else f"{s['max_rel_diff']:.1e}")
        print(f"{label:<12} {s['windows_per_s']:>10.0f} {s['peak_rss_mib']:>9.0f} {diff:>9} | {a.get('windows_per_s', 0):>9.1f} "
              f"{a.get('peak_rss_mib', 0):>9.0f} {a.get('startup_s', 0):>8.1f} {a.get('windows', 0):>8} {a.get('anomalies', 0):>9}")
    print("emulated speed is qemu's, not a Pi's; emulated peak RSS includes qemu (the agent's own is the native figure)")
    for f in failures:
        print(f"FAIL {f}")
    print("aarch64 check: " + ("FAILED" if failures else "passed"))


if __name__ == "__main__":
    raise SystemExit(main())
