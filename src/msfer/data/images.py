"""Decoding any face image to 8-bit RGB, or failing with a message that names the file.

Design choices:

* **Orientation.** EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone
  photo stored sideways comes out the way it is shown; region boxes are measured on
  this upright image. The same rules apply to a PIL image handed over in memory
  (:func:`to_upright_rgb`), so a photo gives the same answer as a path or as an object.
* **HEIC/HEIF** (what iPhones write) is read through the ``pillow-heif`` plugin, which is
  registered when this module is imported; it applies the file's own rotation. msfer depends on
  it; where it is missing anyway (a bare machine given only ``src/`` on ``PYTHONPATH``, as
  ``tools/gpu_experiments.py`` is run), every other format still reads and a HEIC/HEIF file
  fails with an error that names it and the missing plugin.
* **Transparency** (RGBA, LA, PA, palette with a transparent colour) is composited on
  **white**, not dropped: dropping alpha exposes whatever colour the encoder left under
  transparent pixels (often black or garbage), while white matches how the image is
  displayed on a page.
* **16-bit** grey (Pillow modes ``I;16*``, and ``I`` as Pillow opens 16-bit PNGs) is
  scaled by 255/65535 with rounding. Pillow's own conversion clips at 255, turning most
  16-bit images white.
* **Floating-point** grey (Pillow mode ``F``: 32-bit float TIFFs, as scientific and HDR tools
  write them) is scaled by its range: values within 0..1 by 255, within 0..255 as they are,
  within 0..65535 by 255/65535 (Pillow's own conversion clips, turning a 0..1 image black).
  Values outside 0..65535, NaN or infinite have no known scale: such a file is refused with an
  error naming it and the range found.
* **Bad files.** A missing, zero-byte, truncated, corrupt or non-image file raises
  :class:`UnreadableImageError` naming the file. Truncated images are never padded
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off) and Pillow's decompression-bomb
  guard stays on; a bomb is reported as unreadable too.
* **Warnings.** What Pillow warns about while reading a file (``Corrupt EXIF data``, a
  possible decompression bomb) is logged as a warning that names the file, once per file,
  instead of reaching the terminal without it. The image is still read (of damaged EXIF, the
  tags read before the damage are used, its orientation among them).
* **Animated and multi-page images** (GIF, APNG, animated WebP, multi-page TIFF) hold
  several frames. :func:`load_rgb`, which gives one image, reads the first frame and logs a
  warning naming the file and how many frames it holds; :func:`read_frames` reads them all,
  with each frame's time (what ``msfer predict`` and ``msfer report`` do, :func:`frame_count`
  telling such files apart). Other formats' extra images (an MPO photo's second picture, a
  HEIF file's thumbnails or depth map, an icon's other sizes) are not frames: the primary
  image is read.
* **Addresses.** An ``http://``, ``rtsp://`` (or other ``scheme://``) address is not a file:
  it is refused with an error that says so (:func:`address`), not reported as a missing file.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import MsferError
from ..outputs import printable

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
# "scheme://...": a URL. pathlib folds the double slash (Path("http://host/x") is "http:/host/x"), so a path that
# does not exist and has this form is the address it was made from. Two letters or more: "C:/x" is a Windows path.
_ADDRESS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(/?)(?!/)")
ADDRESS_REASON = ("an address, not a file: msfer reads image and video files and folders; download the file, or "
                  "record the stream to a file, first")
_WARNINGS = threading.RLock()  # warnings.catch_warnings is process-wide: one file's warnings at a time
# Pillow formats whose extra frames are frames of an animation or pages of a document (PNG: APNG).
MULTI_FRAME_FORMATS = frozenset({"GIF", "PNG", "WEBP", "TIFF"})
MULTI_FRAME_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in MULTI_FRAME_FORMATS)
# An animation frame shorter than this is shown for DEFAULT_FRAME_SECONDS, as browsers show it (many GIFs say 0).
SHORTEST_FRAME_SECONDS, DEFAULT_FRAME_SECONDS = 0.02, 0.1

log = logging.getLogger(__name__)


class UnreadableImageError(MsferError):
    """An image file that is missing or cannot be decoded."""


class PixelScaleError(ValueError):
    """Pixels that decode but have no meaning msfer can give them (a float image of no known scale)."""


def address(given: str | os.PathLike) -> str | None:
    """The web or stream address (``http://``, ``rtsp://``, ...) that ``given`` is, or None for a file path.

    A string is taken as it is; a :class:`~pathlib.Path` made from an address (which folded its
    ``//``) and naming nothing that exists gets its ``//`` back.
    """
    text = os.fspath(given)
    if isinstance(text, bytes):
        return None
    if isinstance(given, str):
        return text if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", text) else None
    match = _ADDRESS.match(text)
    if match is None or os.path.lexists(text):
        return None
    return f"{match.group(1)}://{text[match.end():]}"


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` to an upright 8-bit RGB image (see the module docstring for the rules)."""
    url = address(path)
    if url is not None:
        raise UnreadableImageError(f"{url}: {ADDRESS_REASON}")
    path = Path(path)
    with _reading(path):
        with named_warnings(path):
            image = Image.open(path)
        with image:
            image.load()  # decode now, inside _reading: truncation only shows up here
            frames = frames_of(image)
            if frames > 1:
                what = "a multi-page image of %d pages" if image.format == "TIFF" else "an animated image of %d frames"
                log.warning("%s: " + what + "; only the first is read here (msfer predict reads them all)",
                            printable(path), frames)
            return to_upright_rgb(image)


def frames_of(image: Image.Image) -> int:
    """How many frames or pages an opened image holds as an animation or a document (1 for every other format)."""
    return int(getattr(image, "n_frames", 1)) if image.format in MULTI_FRAME_FORMATS else 1


def frame_count(path: str | Path) -> int:
    """How many frames (animated GIF, APNG, WebP) or pages (TIFF) ``path`` holds: 1 for a still image, and for a
    file that cannot be opened (reading it then says why)."""
    try:
        with named_warnings(path, report=False), Image.open(path) as image:
            return frames_of(image)
    except Exception:  # noqa: BLE001 - Pillow raises many types; the read that follows reports the file
        return 1


def image_format(path: str | Path) -> str | None:
    """Pillow's name of ``path``'s format ("JPEG", "GIF", "TIFF"...), None for a file it does not open."""
    try:
        with named_warnings(path, report=False), Image.open(path) as image:
            return image.format
    except Exception:  # noqa: BLE001 - Pillow raises many types
        return None


def read_frames(path: str | Path) -> Iterator[tuple[np.ndarray, float | None]]:
    """Every frame of an animated or multi-page image as ``(rgb, seconds)``: upright 8-bit RGB (the rules of the
    module docstring) and the time it is shown from, counted from the first frame (None for the pages of a TIFF,
    which have no time). A still image gives its one frame. A frame that cannot be decoded raises
    :class:`UnreadableImageError` naming the file and the frame."""
    path = Path(path)
    with _reading(path):
        with named_warnings(path):
            image = Image.open(path)
    with image:
        timed, seconds, count = image.format != "TIFF", 0.0, frames_of(image)
        for index in range(count):
            try:
                with _reading(path):  # the first frame fails as a still image does
                    image.seek(index)
                    image.load()
                    rgb = np.asarray(to_upright_rgb(image))
            except UnreadableImageError as error:
                if not index:
                    raise
                reason = str(error).removeprefix(f"{path}: ")
                raise UnreadableImageError(f"{path}: frame {index} of {count}: {reason}") from None
            yield rgb, (round(seconds, 3) if timed else None)
            duration = (image.info.get("duration") or 0) / 1000
            seconds += duration if duration >= SHORTEST_FRAME_SECONDS else DEFAULT_FRAME_SECONDS


def to_upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` (any mode) turned upright by its EXIF orientation and converted to 8-bit RGB.

    The rules of the module docstring (alpha on white, 16-bit and float scaling); an image that is
    already upright and RGB comes back unchanged in content (EXIF orientation is dropped
    from the result, so applying this twice never rotates twice). Pillow's warnings about it (damaged
    EXIF) are logged naming its file (:func:`named_warnings`).
    """
    with named_warnings(getattr(image, "filename", "") or "an image"):
        upright = ImageOps.exif_transpose(image)
    return _to_rgb(upright)


@contextmanager
def named_warnings(name: str | os.PathLike, report: bool = True) -> Iterator[None]:
    """Catch the warnings of the block (Pillow's ``Corrupt EXIF data``, which names no file) and log each, once,
    as a warning naming ``name`` (``report=False``: drop them, for a look at a file that is read in full later,
    which reports them). Blocks in other threads wait meanwhile: the catching is process-wide."""
    with _WARNINGS, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(" ".join(str(warning.message).split()) for warning in caught) if report else ():
        log.warning("%s: %s", printable(name), message)


def image_header(path: str | Path) -> tuple[int, int, str]:
    """``(width, height, mode)`` as stored (before EXIF rotation), read without decoding the pixels."""
    path = Path(path)
    with _reading(path), named_warnings(path), Image.open(path) as image:
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
    except PixelScaleError as error:
        raise UnreadableImageError(f"{path}: {error}") from None
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
    if address(path) is not None:
        return ADDRESS_REASON
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
    if image.mode == "F":
        try:
            return rgb_from_array(pixels_as_bytes(np.asarray(image, dtype=np.float64)))
        except PixelScaleError as error:  # a file's (or a decoded upload's): it can be saved otherwise
            raise PixelScaleError(f"{error}: save it as an 8- or 16-bit image") from None
    if image.mode in _SIXTEEN_BIT_MODES:  # "I" is 32-bit, as Pillow opens a 16-bit PNG: clipped to 16 bits
        return rgb_from_array(_from_sixteen_bits(np.clip(np.asarray(image).astype(np.int64), 0, 65535)))
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def pixels_as_bytes(values: np.ndarray, float_tops: tuple[float, ...] = (1.0, 255.0, 65535.0)) -> np.ndarray:
    """Pixel values (any shape) as ``uint8``, for files (the module docstring's rules) and arrays alike: ``uint8`` as
    they are, ``uint16`` scaled by 255/65535 with rounding, other integers as they are when within 0..255 (a 16-bit
    file's 32-bit ``I`` mode is scaled before, as 16-bit), floating point scaled by the
    narrowest range 0..top of ``float_tops`` that holds them all (0..1 by 255, 0..255 as they are, 0..65535 by
    255/65535). :class:`PixelScaleError` (a ValueError) for values of no known scale, saying the range found."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.uint16:
        return _from_sixteen_bits(values)
    if values.dtype.kind not in "iuf":
        raise PixelScaleError(f"pixel values must be numbers (uint8, another integer type or floating point); got "
                              f"{values.dtype}")
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if values.dtype.kind in "iu":
        if low < 0 or high > 255:
            raise PixelScaleError(f"integer pixel values must be 0..255 (or uint16); got {values.dtype} values "
                                  f"{low}..{high}")
        return values.astype(np.uint8)
    if not np.isfinite(values).all():
        raise PixelScaleError("a floating-point image with NaN or infinite values has no known scale")
    for top in float_tops:
        if low >= 0.0 and high <= top:
            return np.round(values * (255.0 / top if top != 255.0 else 1.0)).astype(np.uint8)
    ranges = ", ".join(f"0..{top:g}" for top in float_tops[:-1]) + f" or 0..{float_tops[-1]:g}"
    raise PixelScaleError(f"a floating-point image with values from {float(low):g} to {float(high):g} has no known "
                          f"scale (msfer reads {ranges})")


def _from_sixteen_bits(values: np.ndarray) -> np.ndarray:
    """16-bit values (0..65535) as 8-bit, by 255/65535 with rounding."""
    return ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
