"""Decoding any face image to 8-bit RGB, or failing with a message that names the file.

Design choices:

* **Orientation.** EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone
  photo stored sideways comes out the way it is shown; region boxes are measured on
  this upright image. The same rules apply to a PIL image handed over in memory
  (:func:`to_upright_rgb`), so a photo gives the same answer as a path or as an object.
* **HEIC/HEIF** (what iPhones write) is read through the ``pillow-heif`` plugin, which is
  registered when this module is imported; it applies the file's own rotation. msfer depends on
  it; where it is missing anyway (a bare machine given only ``src/`` on ``PYTHONPATH``, as
  ``scripts/gpu_experiments.py`` is run), every other format still reads and a HEIC/HEIF file
  fails with an error that names it and the missing plugin.
* **Transparency** (RGBA, LA, PA, palette with a transparent colour) is composited on
  **white**, not dropped: dropping alpha exposes whatever colour the encoder left under
  transparent pixels (often black or garbage), while white matches how the image is
  displayed on a page.
* **16-bit** grey (Pillow modes ``I;16*``, and ``I`` as Pillow opens 16-bit PNGs) is
  scaled by 255/65535 with rounding. Pillow's own conversion clips at 255, turning most
  16-bit images white.
* **Bad files.** A missing, zero-byte, truncated, corrupt or non-image file raises
  :class:`UnreadableImageError` naming the file. Truncated images are never padded
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off) and Pillow's decompression-bomb
  guard stays on; a bomb is reported as unreadable too.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import MsferError

try:
    import pillow_heif
except ImportError:
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()

HEIF_EXTENSIONS = frozenset({".heic", ".heics", ".heif", ".heifs", ".hif"})  # what pillow-heif registers
# Every extension Pillow (with the HEIF plugin) can open, lower-case with the dot; HEIF's even without the
# plugin, so that such a file is reported rather than passed over.
IMAGE_EXTENSIONS = HEIF_EXTENSIONS | frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class UnreadableImageError(MsferError):
    """An image file that is missing or cannot be decoded."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` to an upright 8-bit RGB image (see the module docstring for the rules)."""
    path = Path(path)
    with _reading(path), Image.open(path) as image:
        image.load()  # decode now, inside _reading: truncation only shows up here
        return to_upright_rgb(image)


def to_upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` (any mode) turned upright by its EXIF orientation and converted to 8-bit RGB.

    The rules of the module docstring (alpha on white, 16-bit scaling); an image that is
    already upright and RGB comes back unchanged in content (EXIF orientation is dropped
    from the result, so applying this twice never rotates twice).
    """
    return _to_rgb(ImageOps.exif_transpose(image))


def image_header(path: str | Path) -> tuple[int, int, str]:
    """``(width, height, mode)`` as stored (before EXIF rotation), read without decoding the pixels."""
    path = Path(path)
    with _reading(path), Image.open(path) as image:
        return image.width, image.height, image.mode


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn Pillow's many failure types into one :class:`UnreadableImageError` naming ``path``."""
    try:
        yield
    except FileNotFoundError:
        what = not_a_file_reason(path) if path.is_symlink() else "no such image file"
        raise UnreadableImageError(f"{path}: {what}") from None
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(f"{path}: refused as a possible decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        size = path.stat().st_size if path.is_file() else None
        what = "empty file (0 bytes)" if size == 0 else f"cannot decode image ({error})"
        if size and pillow_heif is None and path.suffix.lower() in HEIF_EXTENSIONS:
            what = "HEIC/HEIF needs the pillow-heif package, which is not installed (pip install pillow-heif)"
        raise UnreadableImageError(f"{path}: {what}") from None


def is_broken_link(path: Path) -> bool:
    """Whether ``path`` is a symbolic link whose target does not exist (e.g. on a disk that is not mounted)."""
    return path.is_symlink() and not path.exists()


def not_a_file_reason(path: str | Path) -> str:
    """Why ``path``, which is no regular file (nor a link to one), cannot be read as one, for messages.

    A broken symbolic link is named as one with its target: "no such file" would be wrong
    to someone who sees the name in ``ls``.
    """
    path = Path(path)
    if is_broken_link(path):
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    if not path.exists():
        return "no such file or folder"
    if path.is_dir():
        return "a symbolic link to a folder, not followed" if path.is_symlink() else "a folder"
    return "not a regular file (a pipe, socket or device)"


def load_rgb_array(path: str | Path) -> np.ndarray:
    """:func:`load_rgb` as an H x W x 3 ``uint8`` array, the form training transforms take."""
    return np.asarray(load_rgb(path))


def rgb_from_array(array: np.ndarray) -> Image.Image:
    """An RGB image from H x W (grey) or H x W x 3 ``uint8`` pixels, e.g. a FER2013 CSV row."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"pixels must be H x W or H x W x 3, got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) * 255 + 32767) // 65535
        return rgb_from_array(grey.astype(np.uint8))
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
