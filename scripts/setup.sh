#!/usr/bin/env bash
# Set up a fresh machine for datapool_pipeline: system tools, a virtualenv in .venv, the package.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh test     # plus test tools and test servers (Azurite, Chromium, poppler)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"

apt_install() {
  # Installs Debian packages that are missing (needs root; skipped with a note otherwise).
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: please install ${missing[*]} (no root/apt-get here); continuing without" >&2
    return 0
  fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ffmpeg (with ffprobe) from Debian; without it the package falls back to imageio-ffmpeg's binary.
# chromium: kaleido draws the figures of report.pdf with it (the demo's reports need them too).
apt_install ffmpeg chromium
if [ "$MODE" = "test" ]; then
  # poppler: pdftoppm renders report pages in the report tests.
  apt_install poppler-utils
  # nodejs + npm: Azurite (Azure Blob emulator, package.json) for the object-store tests.
  command -v npm >/dev/null || apt_install nodejs npm
  # postgresql: a throwaway server on 127.0.0.1 for the Postgres-backed instance test (binaries only).
  apt_install postgresql
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision pinned to the releases available on this machine's disk (no multi-GB download).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
if [ "$MODE" = "test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  if [ -f package.json ] && command -v npm >/dev/null; then
    npm install --silent --no-audit --no-fund >/dev/null
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: ready (.venv)" >&2
