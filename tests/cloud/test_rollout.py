"""Fleet rollout (deploy/ansible) against local targets, and the systemd units (deploy/systemd).

The playbook runs with ``ansible_connection=local`` on two "hosts", each with its own temporary
root prefix, so no real system file, user or service is touched. It installs a wheel built from
this checkout; the dependencies come from PyPI (pip's cache on a warm machine).
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import load_config
from edge.detector import file_sha256
from tests.tools import unavailable

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
UNITS = REPO / "deploy" / "systemd"
MODEL = REPO / "models" / "zoo" / "default"
HOSTS = ("pi-01", "pi-02")


def need(tool: str) -> str:
    path = shutil.which(tool) or (str(Path(sys.executable).parent / tool) if (Path(sys.executable).parent / tool).exists() else None)
    if path is None:
        unavailable(f"{tool} is not installed")
    return path


def systemd_root(tmp: Path) -> Path:
    """A root folder with the system's own units, so `systemd-analyze --root` resolves dependencies."""
    root = tmp / "sdroot"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True, exist_ok=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True, dirs_exist_ok=True)
    bindir = root / "opt" / "edgewatch" / "venv" / "bin"  # ExecStart= must name an executable under the root
    bindir.mkdir(parents=True)
    for name in ("edgewatch", "edgewatch-agent"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    return root


def verify_units(root: Path, units: list[Path]) -> None:
    done = subprocess.run([need("systemd-analyze"), "verify", "--man=no", f"--root={root}", *map(str, units)],
                          capture_output=True, text=True, check=False)
    # systemd-analyze exits 0 on some problems (unknown keys, bad values are only "ignoring"): any output is a failure
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr + done.stdout


def unit_settings(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


# --- systemd units -----------------------------------------------------------------------------

def test_units_verify_and_are_hardened(tmp_path: Path) -> None:
    root = systemd_root(tmp_path)
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    units = [Path(shutil.copy(p, unit_dir)) for p in sorted(UNITS.glob("edgewatch-*"))]
    assert {u.name for u in units} == {"edgewatch-agent.service", "edgewatch-processor.service", "edgewatch-retrain.service",
                                       "edgewatch-retrain.timer"}
    verify_units(root, units)
    for unit in [u for u in units if u.suffix == ".service"]:
        done = subprocess.run([need("systemd-analyze"), "security", "--offline=yes", f"--root={root}", "--no-pager", str(unit)],
                              capture_output=True, text=True, check=False)
        exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
        assert exposure <= 2.0, f"{unit.name}: exposure {exposure}\n{done.stdout}"


def test_agent_unit_has_the_required_settings() -> None:
    s = unit_settings(UNITS / "edgewatch-agent.service")["Service"]
    assert s["User"] == "edgewatch" and s["Type"] == "notify" and s["Restart"] == "on-failure"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"
    assert s["ReadWritePaths"] == "/var/lib/edgewatch" == "/var/lib/" + s["StateDirectory"]
    assert s["MemoryMax"] and int(s["WatchdogSec"]) > 0
    assert "ORT_DISABLE_TELEMETRY=1" in s["Environment"].split()
    assert s["EnvironmentFile"].lstrip("-") == "/etc/edgewatch/agent.env"
    timer = unit_settings(UNITS / "edgewatch-retrain.timer")
    assert timer["Timer"]["Unit"] == "edgewatch-retrain.service" and timer["Timer"]["Persistent"] == "true"


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verification above must be able to fail: a typo in a key is reported."""
    root = systemd_root(tmp_path)
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    broken = unit_dir / "edgewatch-processor.service"
    broken.write_text((UNITS / "edgewatch-processor.service").read_text().replace("NoNewPrivileges=yes", "NoNewPriviledges=yes"))
    with pytest.raises(AssertionError, match="Unknown key 'NoNewPriviledges'"):
        verify_units(root, [broken])


# --- the Ansible rollout -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "-w", str(out), str(REPO)], check=True)
    return next(out.glob("edgewatch-*.whl"))


@pytest.fixture(scope="module")
def wheelhouse(wheel: Path) -> Path:
    """The edge extra's dependencies from PyPI, kept between runs so the rollout installs offline."""
    from localdev.stack import cache_dir

    house = cache_dir() / "wheelhouse"
    # pip download copies our own wheel into the house too, and a copy left by an earlier run would be
    # taken for this one ("already downloaded"), with that run's dependencies: never keep it
    for stale in house.glob("edgewatch-*.whl"):
        stale.unlink()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(house),
                    f"{wheel}[edge]"], check=True, timeout=600)
    for ours in house.glob("edgewatch-*.whl"):
        ours.unlink()
    return house


def write_keys(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.pub"
        if not path.exists():
            pub = Ed25519PrivateKey.generate().public_key()
            path.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        paths.append(str(path))
    return paths


def inventory(tmp: Path, wheel: Path, keys: list[str], wheelhouse: Path) -> Path:
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    data = {"all": {"children": {
        "edgewatch_agents": {
            "vars": {**local, "edgewatch_become": False, "edgewatch_wheel": str(wheel), "edgewatch_python": sys.executable,
                     "edgewatch_pip_extra_args": f"--no-index --find-links {wheelhouse}",
                     "edgewatch_user": me, "edgewatch_group": group, "edgewatch_owner": me, "edgewatch_site": "lab",
                     "edgewatch_trusted_keys": keys, "edgewatch_ca_cert": str(keys[0]),
                     "edgewatch_agent_settings": {"mqtt": {"host": "127.0.0.1", "port": 8883, "username": "agent-lab"},
                                                  "kafka": {"bootstrap": "kafka-1.internal:9093"}},
                     "edgewatch_agent_env": {"EDGEWATCH_MQTT__PASSWORD": "s3cret with spaces"}},
            "hosts": {
                "pi-01": {"edgewatch_prefix": str(tmp / "pi-01")},
                "pi-02": {"edgewatch_prefix": str(tmp / "pi-02"), "edgewatch_site": "annex",
                          "edgewatch_agent_host_settings": {"decision": {"k": 2, "n": 3, "device_thresholds": {"pump-7": 40.5}},
                                                       "metrics": {"port": 9200}}},
            }},
        "edgewatch_prometheus": {"hosts": {"monitor": {**local, "edgewatch_become": False,
                                                        "edgewatch_prefix": str(tmp / "monitor")}}},
    }}}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def playbook(tmp: Path, inv: Path, *args: str) -> dict[str, dict[str, int]]:
    """Run site.yml; the PLAY RECAP per host as {host: {ok, changed, failed, ...}}."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_HOME": str(tmp / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"), "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-tmp"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run([need("ansible-playbook"), "-i", str(inv), str(ANSIBLE / "site.yml"), *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False, cwd=tmp)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    recap = done.stdout.split("PLAY RECAP", 1)[1]
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", recap, flags=re.M)}


def test_rollout_installs_edge_only_and_is_idempotent(tmp_path: Path, wheel: Path, wheelhouse: Path) -> None:
    need("ansible-playbook")
    keys = write_keys(tmp_path / "keys", ["release-2026", "release-2027"])
    inv = inventory(tmp_path, wheel, keys, wheelhouse)

    first = playbook(tmp_path, inv)
    assert set(first) == {*HOSTS, "monitor"}
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in first.values()), first
    assert all(first[h]["changed"] > 0 for h in first), first

    second = playbook(tmp_path, inv)
    assert {h: r["changed"] for h, r in second.items()} == {h: 0 for h in first}, second

    for host in HOSTS:
        root = tmp_path / host
        venv = root / "opt" / "edgewatch" / "venv"
        # only the edge extra: the agent imports without torch, and torch is not installed at all
        probe = "import sys, edge.agent, edge.cli; assert 'torch' not in sys.modules; import importlib.util as u; " \
                "print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)"
        out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["True", "True"]
        assert subprocess.run([str(venv / "bin" / "edgewatch-agent"), "--version"], capture_output=True, text=True,
                              check=True).stdout.startswith("edgewatch-agent 0.1.0")
        etc = root / "etc" / "edgewatch"
        config = load_config(etc / "agent.toml", env={})
        assert config.agent.id == host and config.mqtt.port == 8883 and config.mqtt.username == "agent-lab"
        assert config.model.path == "/opt/edgewatch/models/default" and config.outbox.path == "/var/lib/edgewatch/outbox.sqlite"
        assert (etc / "agent.toml").stat().st_mode & 0o777 == 0o640 and (etc / "agent.env").stat().st_mode & 0o777 == 0o640
        assert "EDGEWATCH_MQTT__PASSWORD=s3cret with spaces" in (etc / "agent.env").read_text().splitlines()
        assert (etc / "ca.crt").read_bytes() == Path(keys[0]).read_bytes()
        assert sorted(p.name for p in (etc / "keys").iterdir()) == ["release-2026.pub", "release-2027.pub"]
        model = root / "opt" / "edgewatch" / "models" / "default"
        assert file_sha256(model / "model.onnx") == file_sha256(MODEL / "model.onnx")
        assert (root / "etc" / "systemd" / "system" / "edgewatch-agent.service").read_text() == \
            (UNITS / "edgewatch-agent.service").read_text()
    pi2 = load_config(tmp_path / "pi-02" / "etc" / "edgewatch" / "agent.toml", env={})
    assert (pi2.decision.k, pi2.decision.n, dict(pi2.decision.device_thresholds), pi2.metrics.port) == (2, 3, {"pump-7": 40.5}, 9200)
    assert load_config(tmp_path / "pi-01" / "etc" / "edgewatch" / "agent.toml", env={}).decision.k == 1

    # the installed unit verifies against the installed layout (ExecStart must exist under the root)
    if shutil.which("systemd-analyze"):
        for host in HOSTS:
            root = tmp_path / host
            shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", dirs_exist_ok=True, symlinks=True)
            verify_units(root, [root / "etc" / "systemd" / "system" / "edgewatch-agent.service"])

    targets = yaml.safe_load((tmp_path / "monitor" / "etc" / "prometheus" / "targets" / "agents" / "edgewatch-agents.yml").read_text())
    assert targets == [{"targets": ["pi-02:9200"], "labels": {"site": "annex"}},
                       {"targets": ["pi-01:9108"], "labels": {"site": "lab"}}]

    # revoking a key: drop it from the list and run the key tasks only; it is removed on every host
    inv = inventory(tmp_path, wheel, keys[:1], wheelhouse)
    third = playbook(tmp_path, inv, "--tags", "keys")
    assert all(third[h]["changed"] == 1 for h in HOSTS), third
    for host in HOSTS:
        assert [p.name for p in (tmp_path / host / "etc" / "edgewatch" / "keys").iterdir()] == ["release-2026.pub"]
