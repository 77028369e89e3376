"""The fleet in groups (edge.fleetsim): each injected kind is in the signals as its truth says, the
truth is recorded, publishing keeps every device in step, and the simulate command writes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import fleetsim, simulator
from edge.contract import decode_readings
from edge.synth import CHANNEL_NAMES

STEPS = 1200
T0 = 1_767_225_600.0


@pytest.fixture(scope="module")
def fleet() -> fleetsim.GroupedFleet:
    return fleetsim.grouped_fleet(fleetsim.FleetPlan(devices=50, groups=5), STEPS, seed=4)


def stream(fleet: fleetsim.GroupedFleet, device: str) -> simulator.DeviceStream:
    return next(s for s in fleet.streams if s.device_id == device)


def role(fleet: fleetsim.GroupedFleet, what: str) -> tuple[fleetsim.Injected, simulator.DeviceStream]:
    (i,) = [i for i in fleet.injected if i.what == what]
    return i, stream(fleet, i.device_id)


def inside(d: simulator.DeviceStream, i: fleetsim.Injected) -> np.ndarray:
    return (d.ts >= i.start_ts - 0.5) & (d.ts <= i.end_ts + 0.5)


def test_groups_roles_and_truth_are_seeded(fleet: fleetsim.GroupedFleet) -> None:
    again = fleetsim.grouped_fleet(fleetsim.FleetPlan(devices=50, groups=5), STEPS, seed=4)
    assert again.injected == fleet.injected
    assert all((a.values == b.values).all() and (a.ts == b.ts).all() for a, b in zip(again.streams, fleet.streams, strict=True))
    assert list(fleet.groups) == ["plant-a", "plant-b", "plant-c", "plant-d", "plant-e"]
    assert all(len(v) == 10 for v in fleet.groups.values()) and len(fleet.streams) == 50
    assert fleet.groups["plant-c"][3] == "plant-c-pump-03"
    whats = [i.what for i in fleet.injected]
    assert sorted(w for w in whats if w in fleetsim.SENSOR_CHECKS) == sorted(fleetsim.SENSOR_CHECKS)
    assert whats.count("peer_drift") == whats.count("silence") == 1
    kind_of = {"peer_drift": "peer_outlier", "silence": "device_silent", **{c: "sensor_fault" for c in fleetsim.SENSOR_CHECKS}}
    for i in fleet.injected:
        assert i.kind == kind_of.get(i.what, "incident"), i
        assert i.device_id in fleet.groups[i.group] and T0 <= i.start_ts < i.end_ts <= T0 + STEPS
    roles = [i.device_id for i in fleet.injected if i.what in kind_of]
    assert len(roles) == len(set(roles)) == 7  # one role a device, and no process fault beside it
    assert not {i.device_id for i in fleet.injected if i.kind == "incident"} & set(roles)
    assert {i.what for i in fleet.injected if i.kind == "incident"} <= {"spike", "drift", "noise", "decorrelate"}
    doc = json.loads(json.dumps(fleet.truth()))
    assert fleetsim.injected_of(doc) == fleet.injected and doc["groups"] == fleet.groups


def test_peer_drift_leaves_the_group_along_the_load_line(fleet: fleetsim.GroupedFleet) -> None:
    i, d = role(fleet, "peer_drift")
    peers = [stream(fleet, p) for p in fleet.groups[i.group] if p != i.device_id]
    assert (i.start_ts, i.end_ts) == (T0, T0 + STEPS - 1)

    def robust_z(lo: int, hi: int, channel: int) -> float:
        means = np.array([p.values[lo:hi, channel].mean() for p in peers])
        centre = np.median(means)
        spread = 1.4826 * np.median(np.abs(means - centre))
        return float((d.values[lo:hi, channel].mean() - centre) / spread)

    current = CHANNEL_NAMES.index("current")
    assert abs(robust_z(0, 120, current)) < 4  # one of its peers at first
    assert robust_z(STEPS - 240, STEPS, current) > 8  # well outside at the end: the group's z_limit is 5 by default
    # every channel moved along its load line: current against vibration keeps its slope (14 A per 2 mm/s)
    vib = CHANNEL_NAMES.index("vibration")
    slope = np.polyfit(d.values[:, vib], d.values[:, current], 1)[0]
    assert 5.0 < slope < 8.0


def test_stuck_and_range_are_on_one_channel_inside_their_span(fleet: fleetsim.GroupedFleet) -> None:
    i, d = role(fleet, "stuck")
    j = CHANNEL_NAMES.index(i.channels[0])
    span = inside(d, i)
    assert span.sum() == len(d.ts[span]) >= 100 and np.ptp(d.values[span, j]) == 0.0
    assert np.ptp(d.values[~span, j]) > 0 and all(np.ptp(d.values[span, k]) > 0 for k in range(6) if k != j)
    i, d = role(fleet, "range")
    j = CHANNEL_NAMES.index(i.channels[0])
    span = inside(d, i)
    assert d.values[span, j].min() > d.values[~span, j].max() + 3 * np.ptp(d.values[~span, j])


def test_timestamp_faults_as_the_agent_measures_them(fleet: fleetsim.GroupedFleet) -> None:
    """The rules of edge.sensorhealth with its defaults: rate (median step >= 2 periods), clock (median step off
    by > 10 %, or > 0.2 periods from the grid on average), dropout (> 20 % of the readings missing)."""

    def steps(what: str) -> tuple[np.ndarray, np.ndarray]:
        i, d = role(fleet, what)
        span = inside(d, i)
        return np.diff(d.ts[span]), np.diff(d.ts[~span & (d.ts < i.start_ts)])

    rate, before = steps("rate")
    assert np.median(rate) == 3.0 and set(before) == {1.0}
    clock, before = steps("clock")
    off_grid = np.abs(clock - np.round(clock))
    assert abs(np.median(clock) - 1) > 0.1 or off_grid.mean() > 0.2
    assert off_grid.mean() > 0.3 and set(before) == {1.0} and (clock > 0).all()
    dropout, before = steps("dropout")
    assert np.median(dropout) == 1.0 and (np.round(dropout) - 1).sum() / len(dropout) > 0.3 and dropout.max() < 5  # no window reset
    for what in ("rate", "clock", "dropout"):
        i, _ = role(fleet, what)
        assert i.channels == CHANNEL_NAMES  # the readings share their timestamps: every channel


def test_a_silent_device_sends_nothing_then_resumes(fleet: fleetsim.GroupedFleet) -> None:
    i, d = role(fleet, "silence")
    assert not inside(d, i).any() and (d.ts < i.start_ts).any() and (d.ts > i.end_ts).any()
    assert i.end_ts - i.start_ts >= 0.19 * STEPS and i.channels == ()
    assert d.tick is not None and len(d.tick) == len(d.ts) and (np.diff(d.tick) > 0).all()


def test_a_fault_free_lead_holds_nothing_and_a_silence_can_be_given_in_readings() -> None:
    lead = 600
    plan = fleetsim.FleetPlan(devices=50, groups=5, fault_free_steps=lead, silence_steps=15)
    fleet = fleetsim.grouped_fleet(plan, STEPS, seed=4)
    assert min(i.start_ts for i in fleet.injected) >= T0 + lead
    for d in fleet.streams:  # every reading of the lead is there, on the grid
        np.testing.assert_array_equal(d.ts[:lead], T0 + np.arange(lead))
    i, d = role(fleet, "silence")
    assert i.end_ts - i.start_ts == 14 and len(d.ts) == STEPS - 15
    drift, d = role(fleet, "peer_drift")
    assert drift.start_ts == T0 + lead
    with pytest.raises(ValueError, match="fault_free_steps 1195 leaves fewer than 10 of the run.s 1200 steps"):
        fleetsim.grouped_fleet(fleetsim.FleetPlan(fault_free_steps=1195), STEPS)


def test_publishing_keeps_every_device_in_step(fleet: fleetsim.GroupedFleet) -> None:
    sent: dict[str, list[float]] = {}
    for step, messages in simulator.paced_steps(fleet.streams, 0, 50):
        for device, payload, n in messages:
            readings = decode_readings(payload, topic_device=device)
            assert len(readings) == n
            assert all(step - 1 <= r.ts - T0 < step + 50 for r in readings)  # its own tick, whatever was removed before
            sent.setdefault(device, []).extend(r.ts for r in readings)
    assert sent == {d.device_id: d.ts.tolist() for d in fleet.streams}


def test_kinds_are_scored_by_kind_device_and_time() -> None:
    inj = [fleetsim.Injected("sensor_fault", "stuck", "a", "g", ("flow",), 100.0, 200.0),
           fleetsim.Injected("peer_outlier", "peer_drift", "b", "g", ("flow",), 0.0, 1000.0),
           fleetsim.Injected("device_silent", "silence", "c", "g", (), 300.0, 400.0)]
    incidents = [("sensor_fault", ["a"], 250.0, 260.0), ("peer_outlier", ["a"], 10.0, None), ("device_silent", ["c"], 500.0, 510.0)]
    assert fleetsim.score_kinds(inj, incidents, slack_s=60.0) == {"sensor_fault": (1, 0), "peer_outlier": (0, 1),
                                                                  "device_silent": (0, 1)}
    assert fleetsim.score_kinds(inj, incidents, slack_s=100.0)["device_silent"] == (1, 0)


def test_an_impossible_plan_says_why() -> None:
    assert fleetsim.FleetPlan(devices=6, groups=2).problems() == [
        "7 devices with a role (peer drift, sensor faults, silence) but only 6 devices"]
    with pytest.raises(ValueError, match="unknown sensor fault 'smoke'"):
        fleetsim.grouped_fleet(fleetsim.FleetPlan(sensor_faults=("smoke",)), 100)  # type: ignore[arg-type]
    out = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--groups", "3", "--devices", "2", "--port", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot fill 3 groups" in out.stderr
    out = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--groups", "2", "--devices", "10", "--rate", "10",
                          "--duration", "60", "--fault-free-steps", "600", "--port", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "fault_free_steps 600 leaves fewer than 10 of the run's 600 steps" in out.stderr


def test_cli_publishes_a_grouped_fleet_and_writes_its_truth(mqtt_port: int, unique: str, tmp_path: Path) -> None:
    truth = tmp_path / "truth.json"
    out = subprocess.run([sys.executable, "-m", "edge.cli", "simulate", "--port", str(mqtt_port), "--devices", "12",
                          "--groups", "2", "--rate", "0", "--duration", "600", "--sensor-faults", "stuck,rate", "--silent", "1",
                          "--faults", "spike,noise", "--faults-per-device", "1",
                          "--topic-prefix", f"fleet-{unique}", "--truth", str(truth)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "incident 8, sensor_fault 2, peer_outlier 1, device_silent 1" in out.stdout, out.stdout
    doc = json.loads(truth.read_text())
    assert doc["groups"] == {"plant-a": [f"plant-a-pump-{i:02d}" for i in range(6)],
                             "plant-b": [f"plant-b-pump-{i:02d}" for i in range(6)]}
    assert sorted(i["what"] for i in doc["injected"] if i["kind"] != "incident") == ["peer_drift", "rate", "silence", "stuck"]
    # every reading went out: 12 devices x 600 steps less what the rate fault (2 of 3 over 120 steps) and the silence
    # (120 steps) removed
    assert doc["sent"]["readings_sent"] == 12 * 600 - 80 - 120 and doc["sent"]["messages_failed"] == 0
