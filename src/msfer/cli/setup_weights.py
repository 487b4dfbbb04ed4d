"""``msfer setup-weights``: put the offline ImageNet weights where torchvision finds them (training only)."""
from __future__ import annotations

import argparse

from ..model.pretrained import checkpoint_dir, setup_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = f"Target folder: $TORCH_HOME/hub/checkpoints (now {checkpoint_dir()})."


def run(args: argparse.Namespace) -> int:
    print(f"ImageNet MobileNetV2 weights: {setup_weights()}")
    return 0
