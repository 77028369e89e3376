"""The edge never loads torch, models or cloud: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys, importlib, pkgutil
import edge, edge.cli
for mod in pkgutil.walk_packages(edge.__path__, "edge."):
    importlib.import_module(mod.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "models", "cloud"})
print(",".join(bad))
"""


def test_edge_imports_no_torch_models_or_cloud() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"edge loaded: {out.stdout.strip()}"


def test_agent_entry_point_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "edgewatch-agent" in out.stdout
