"""A Debian 12 arm64 root folder with CPython 3.11 and the ``edge`` extra as linux/aarch64 wheels.

Used by ``check.py``; everything downloaded is cached under ``~/.cache/edgewatch/aarch64``
(``EDGEWATCH_CACHE``), keyed by what was asked for, so a warm run downloads nothing:

- ``debs/``: the dependency closure of ``python3.11:arm64`` and ``libstdc++6:arm64`` from Debian's
  archive (``apt-get download``), unpacked with ``dpkg -x`` into ``root/`` (no maintainer scripts).
- ``wheels/``: ``pip download`` of the edge extra for CPython 3.11 on manylinux aarch64, with the
  extra's direct dependencies pinned to the versions installed natively (so native and emulated
  scores come from the same onnxruntime and numpy).
- ``deps/``: those wheels installed with ``pip install --target``; the edgewatch wheel itself is
  built from the checkout on every run and installed beside it, never cached.

Needs: ``dpkg --add-architecture arm64`` and ``apt-get update`` done (``check.sh`` does both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

log = logging.getLogger(__name__)

ROOT_PACKAGES = ("python3.11:arm64", "libstdc++6:arm64")
# pulled in through dpkg's own dependencies; the interpreter does not need them
SKIP_PACKAGES = ("dpkg:arm64", "tar:arm64", "install-info:arm64")
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, 37)))
REPO = Path(__file__).resolve().parents[2]

# What a Raspberry Pi reports; onnxruntime reads /proc/cpuinfo on import and crashes on the
# host's x86 file, and qemu looks up absolute paths under its -L prefix first.
CPU_PARTS = {"cortex-a72": ("0xd08", "3"), "cortex-a53": ("0xd03", "4"), "cortex-a76": ("0xd0b", "1")}


@dataclass(frozen=True)
class Rootfs:
    root: Path  # the Debian arm64 root (qemu -L)
    deps: Path  # site folder with the edge extra's dependencies

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / "python3.11"

    def set_cpu(self, cpu: str) -> None:
        """Write a Raspberry-Pi-like ``proc/cpuinfo`` for ``cpu`` (4 cores) into the root."""
        part, rev = CPU_PARTS[cpu]
        block = ("processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                 "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                 f"CPU part\t: {part}\nCPU revision\t: {rev}\n\n")
        (self.root / "proc").mkdir(exist_ok=True)
        (self.root / "proc" / "cpuinfo").write_text("".join(block.format(n=n) for n in range(4)))


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEWATCH_CACHE", Path.home() / ".cache" / "edgewatch")) / "aarch64"


def _run(cmd: list[str], **kw: object) -> str:
    log.debug("run %s", " ".join(cmd))
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return str(done.stdout)


def _closure() -> list[str]:
    out = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
                "--no-replaces", "--no-enhances", *ROOT_PACKAGES])
    names = {line.strip() for line in out.splitlines() if line and not line.startswith((" ", "<"))}
    pkgs = sorted(n for n in names if n.endswith(":arm64") and n not in SKIP_PACKAGES)
    if "python3.11:arm64" not in pkgs:
        raise RuntimeError("apt-cache knows no python3.11:arm64: run `dpkg --add-architecture arm64 && apt-get update`")
    return pkgs


def _candidates(pkgs: list[str]) -> list[tuple[str, str]]:
    """(name, candidate version) of each package, from ``apt-cache show``'s stanzas."""
    out = []
    for stanza in _run(["apt-cache", "show", "--no-all-versions", *pkgs]).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if "Package" in fields:
            out.append((fields["Package"], fields["Version"]))
    return sorted(set(out))


def _deb_name(name: str, ver: str) -> str:
    return f"{name}_{ver.replace(':', '%3a')}_arm64.deb"  # apt-get download's file name (epoch escaped)


def build_root(cache: Path) -> Path:
    """The unpacked arm64 root; rebuilt only when the resolved package set (name and version) changes."""
    pkgs = _closure()
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    versions = _candidates(pkgs)
    key = hashlib.sha256(json.dumps(sorted(versions)).encode()).hexdigest()[:16]
    root = cache / f"root-{key}"
    if (root / ".complete").exists():
        return root
    have = {p.name for p in debs.glob("*.deb")}
    wanted = [f"{name}:arm64" for name, ver in versions if _deb_name(name, ver) not in have]
    if wanted:
        log.info("apt_download packages=%d", len(wanted))
        _run(["apt-get", "download", *wanted], cwd=debs)
    for old in cache.glob("root-*"):
        shutil.rmtree(old)
    tmp = cache / f"tmp-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    for name, ver in versions:
        _run(["dpkg", "-x", str(debs / _deb_name(name, ver)), str(tmp)])
    (tmp / "etc").mkdir(exist_ok=True)
    (tmp / "etc" / "ld.so.cache").write_bytes(b"")  # so the guest loader never reads the host's cache
    (tmp / ".complete").write_text("\n".join(f"{n} {v}" for n, v in versions) + "\n")
    tmp.rename(root)
    log.info("root_ready path=%s packages=%d", root, len(versions))
    return root


def edge_requirements() -> list[str]:
    """The ``edge`` extra from pyproject.toml, each direct dependency pinned to the native version."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["edge"]
    pinned = []
    for req in extra:
        name = re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0]
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(req)
    return pinned


def _pip_target_flags() -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    for plat in PLATFORMS:
        flags += ["--platform", plat]
    return flags


def install_deps(cache: Path) -> tuple[Path, list[str]]:
    """The edge extra's aarch64 wheels installed into a cached site folder; returns it and the pins."""
    reqs = edge_requirements()
    key = hashlib.sha256(json.dumps(reqs).encode()).hexdigest()[:16]
    deps = cache / f"deps-{key}"
    if (deps / ".complete").exists():
        return deps, reqs
    wheels = cache / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    log.info("pip_download requirements=%s", " ".join(reqs))
    _run([*pip, "download", "-d", str(wheels), *_pip_target_flags(), *reqs])
    for old in cache.glob("deps-*"):
        shutil.rmtree(old)
    tmp = cache / f"tmp-deps-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    _run([*pip, "install", "--target", str(tmp), "--no-index", "--find-links", str(wheels), *_pip_target_flags(), *reqs])
    (tmp / ".complete").write_text("\n".join(reqs) + "\n")
    tmp.rename(deps)
    return deps, reqs


def install_edgewatch(site: Path, work: Path) -> Path:
    """Build the edgewatch wheel from the checkout and install it (no dependencies) into ``site``."""
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel", "--no-deps",
          "-w", str(dist), str(REPO)])
    wheel = next(dist.glob("edgewatch-*.whl"))
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps", "--target", str(site),
          *_pip_target_flags(), str(wheel)])
    return wheel


def prepare(work: Path) -> tuple[Rootfs, Path, list[str]]:
    """Root folder, cached dependencies, and a per-run site with edgewatch; returns (rootfs, site, pins)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = build_root(cache)
    deps, reqs = install_deps(cache)
    site = work / "site"
    site.mkdir(parents=True, exist_ok=True)
    install_edgewatch(site, work)
    return Rootfs(root, deps), site, reqs
