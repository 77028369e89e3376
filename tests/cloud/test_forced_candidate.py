"""Issue 17's first acceptance point end to end, on the real brokers and an archive of 1,000 device-days
(50 simulated devices, 21 days): a candidate whose threshold is
set too low raises about 3x production's alerts in the backtest, the gate refuses it at
registration, and a forced registration and publish is rejected again in the agent's shadow trial
by the prediction the backtest signed into its manifest (not by the old live-rate gate)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import backtest
from cloud.cli import main
from cloud.evaluate.agent_path import agent_config
from cloud.keys import generate_keypair
from cloud.registry import Registry
from edge.agent import Agent
from edge.config import load_config
from edge.contract import decode_manifest
from edge.contract.update import decode_status
from edge.detector import OnnxDetector, load_manifest
from tests.cloud.archive_util import tiny_model_as, write_archive
from tests.edge.agent_util import TINY_MODEL, Publisher, TopicReader, fleet_readings, payloads, toml_config
from tests.tools import wait_for

DEVICES = 4
STEPS = 4000


def test_a_threshold_too_low_is_refused_at_registration_and_again_in_shadow_when_forced(
        tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "archive"
    windows = write_archive(archive, devices=50, days=21, per_day=96)  # the fleet: at least 1,000 device-days
    scores = np.concatenate([OnnxDetector.load(TINY_MODEL).score(w.astype(np.float32))[0] for w in windows.values()])
    # production alerts on a tenth of the windows, so that a short trial can tell three times that apart
    prod = tiny_model_as(tmp_path, "1.0", float(np.quantile(scores, 0.90)))
    low = tiny_model_as(tmp_path, "1.1", float(np.quantile(scores, 0.70)))
    fixed = agent_config()
    fixed = dataclasses.replace(fixed, adaptive=dataclasses.replace(fixed.adaptive, enabled=False))
    p, c = (backtest(archive, m, config=fixed).overall() for m in (prod, low))
    assert p.devices == 50 and p.device_days >= 1000
    assert c.window_rate["p50"] > 2.5 * p.window_rate["p50"]
    assert c.alerts_per_device_day["p50"] > 2 * p.alerts_per_device_day["p50"], (c, p)

    toml = tmp_path / "backtest.toml"
    toml.write_text("[adaptive]\nenabled = false\n")
    reg = tmp_path / "registry"
    assert main(["registry", "register", str(prod), "--root", str(reg)]) == 0
    assert main(["registry", "promote", "tiny-zscore", "1.0", "--root", str(reg)]) == 0
    gate = ["registry", "register", str(low), "--root", str(reg), "--archive", str(archive), "--config", str(toml)]
    assert main(gate) == 3 and "refused" in capsys.readouterr().err
    assert Registry(reg).versions("tiny-zscore") == ["1.0"]
    assert main([*gate, "--force"]) == 0
    signed = decode_manifest((Registry(reg).version_dir("tiny-zscore", "1.1") / "manifest.json").read_bytes()).expected_alerts
    assert signed is not None and signed.baseline_window_rate == pytest.approx(p.window_rate["p50"])

    key, _ = generate_keypair(tmp_path / "keys")
    topics = {k: f"{k}.{unique}" for k in ("anomalies", "telemetry", "deadletter", "status")}
    prefix, group = f"fc{unique}", f"g{unique}"
    extra = f"""[updates]
enabled = true
group = "{group}"
trusted_keys_dir = "{tmp_path / 'keys'}"
state_dir = "{tmp_path / 'models'}"
shadow_min_windows = 2000
shadow_min_seconds = 1.0
report_interval_s = 0
"""
    config = load_config(toml_config(tmp_path, agent_id=f"a{unique}", mqtt_port=mqtt_port, kafka_bootstrap=kafka_bootstrap,
                                     prefix=prefix, topics=topics, extra=extra), env={})
    config = dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, status_topic=topics["status"]))
    agent = Agent(config)
    status = TopicReader(kafka_bootstrap, topics["status"], f"st-{unique}")
    pub = Publisher(mqtt_port, f"fleet-{unique}")
    agent.start()
    try:
        assert main(["registry", "publish", "tiny-zscore", "1.1", "--root", str(reg), "--key", str(key), "--group", group,
                     "--mqtt-port", str(mqtt_port), "--prefix", prefix]) == 0
        status.poll_until(lambda v: any(decode_status(x).action == "shadow_started" for x in v), 60, "the shadow trial")
        readings = [fleet_readings(f"pump-{d}", STEPS, seed=100 + d) for d in range(DEVICES)]
        for step in range(0, STEPS, 50):
            pub.publish([m for d in range(DEVICES) for m in payloads(readings[d][step: step + 50], batch=50, prefix=prefix)])
        got = [decode_status(x) for x in status.poll_until(
            lambda v: any(decode_status(x).action in ("rejected", "promoted") for x in v), 120, "the trial's verdict")]
        verdict = next(s for s in got if s.action in ("rejected", "promoted"))
        assert verdict.action == "rejected" and verdict.model_version == "1.1", got
        assert "(max_ratio 2 x production's" in verdict.reason, verdict.reason
        assert agent.registry.get_sample_value("edgewatch_agent_model_rejections_total", {"reason": "baseline_ratio"}) == 1
        wait_for(lambda: agent.pipeline is not None and agent.pipeline.manifest.version == load_manifest(TINY_MODEL).version,
                 10, "the live model to stay")
    finally:
        pub.close()
        agent.stop()
        status.close()
