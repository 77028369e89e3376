#!/usr/bin/env bash
# Raspberry-Pi-class check: the edge agent as linux/aarch64 (CPython 3.11, Debian 12 arm64) under
# qemu user-mode emulation on Cortex-A72 and Cortex-A53 cores, compared with native. See check.py.
# Installs what it needs on a fresh Debian machine (qemu-user-static, the arm64 architecture for
# apt); downloads are cached under ${EDGEWATCH_CACHE:-~/.cache/edgewatch}/aarch64.
# Usage: deploy/aarch64/check.sh [--cpus cortex-a72,cortex-a53] [--json FILE] [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${EDGEWATCH_VENV:-.venv}
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "== dpkg --add-architecture arm64" >&2
  $sudo dpkg --add-architecture arm64
  need_update=1
fi
if ! command -v qemu-aarch64-static >/dev/null 2>&1; then
  need_update=1
fi
# apt-cache must know the arm64 packages (a machine whose lists predate the architecture does not)
if [ "$need_update" -eq 1 ] || [ -z "$(apt-cache madison python3.11:arm64 2>/dev/null)" ]; then
  echo "== apt-get update" >&2
  $sudo apt-get update -qq
fi
if ! command -v qemu-aarch64-static >/dev/null 2>&1; then
  echo "== apt-get install qemu-user-static" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi
[ -x "$VENV/bin/python" ] || { echo "no virtual environment at $VENV: run ./dev setup first" >&2; exit 2; }
exec "$VENV/bin/python" deploy/aarch64/check.py "$@"
