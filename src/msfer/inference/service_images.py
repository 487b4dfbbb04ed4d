"""An uploaded image, decoded within the REST service's bounds: its size read from the header before anything is
decoded, large images decoded reduced, each request's peak memory estimated for the service's budget, the answer
given in the original image's pixels, and the memory a request freed handed back to the system.
"""
from __future__ import annotations

import copy
import ctypes
import functools
import math
import os
from collections.abc import Sequence

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from ..data.images import UnreadableImageError, frames_of, load_rgb, to_upright_rgb
from ..faces.detection import detection_scales
from ..faces.quality import quality_issues

# The estimate of one request's peak (estimated_mb), fitted to measured peaks: per decoded pixel (the decoded
# image and its copies) and per detector pixel (the detector's input and its activations in ONNX Runtime).
MB_PER_DECODED_MP = 9.0
MB_PER_DETECTOR_MP = 85.0
MB_PER_REQUEST = 30.0


def decode_factor(width: int, height: int, decode_pixels: int) -> int:
    """The smallest whole factor that reduces a ``width`` x ``height`` image to at most ``decode_pixels``."""
    factor = 1
    while math.ceil(width / factor) * math.ceil(height / factor) > decode_pixels:
        factor += 1
    return factor


def estimated_mb(width: int, height: int, recognizer, decode_pixels: int) -> float:
    """An estimate of the peak memory one request for a ``width`` x ``height`` image adds (MB): the decoded image and
    its copies, at the size it is decoded (at most ``decode_pixels``), and ``recognizer``'s detector passes over it
    (fitted to measured peaks)."""
    factor = decode_factor(width, height, decode_pixels)
    decoded_mp = math.ceil(width / factor) * math.ceil(height / factor) / 1e6
    min_face = getattr(recognizer, "min_face", None)
    detect_size = getattr(recognizer, "detect_size", 640)
    scales = detection_scales(height, width, detect_size, min_face)
    detector_mp = max(scale * scale for scale in scales) * width * height / 1e6
    return MB_PER_REQUEST + MB_PER_DECODED_MP * decoded_mp + MB_PER_DETECTOR_MP * detector_mp


def image_size(path: str, name: str, max_pixels: int) -> tuple[int, int, int]:
    """The stored width and height from the file's header (nothing decoded), and its number of frames (pages);
    415 / 400 / 413 as the file is."""
    try:
        with Image.open(path) as header:  # lazy: reads the size, decodes nothing
            width, height = header.size
            frames = frames_of(header)
    except UnidentifiedImageError:
        raise HTTPException(415, f"{name}: not an image (the bytes are no format Pillow decodes, "
                                 "e.g. JPEG, PNG, WebP, BMP, TIFF)") from None
    except Image.DecompressionBombError:
        raise HTTPException(413, f"{name}: image too large: over {max_pixels:,} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise HTTPException(400, f"{name}: cannot decode image ({error})") from None
    if width * height > max_pixels:
        raise HTTPException(413, f"{name}: image too large: {width} x {height} = {width * height:,} pixels, "
                                 f"the limit is {max_pixels:,}")
    return width, height, frames


def decode_reduced(path: str, name: str, width: int, height: int, decode_pixels: int) -> Image.Image:
    """The upright RGB image (msfer's decoding rules: EXIF rotation, alpha on white, 16-bit), reduced when it has
    more than ``decode_pixels``: a JPEG is decoded at 1/2, 1/4 or 1/8 scale directly (Pillow's draft), any image
    still over the limit is reduced by the smallest whole factor that brings it within."""
    factor = decode_factor(width, height, decode_pixels)
    try:
        if factor == 1:
            return load_rgb(path)
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(None, (math.ceil(width / factor), math.ceil(height / factor)))
            image.load()
            upright = to_upright_rgb(image)
    except UnreadableImageError as error:
        raise HTTPException(400, str(error).replace(path, name)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise HTTPException(400, f"{name}: cannot decode image ({error})") from None
    rest = decode_factor(upright.width, upright.height, decode_pixels)
    return upright.reduce(rest) if rest > 1 else upright


def upright_size(image: Image.Image, width: int, height: int) -> tuple[int, int]:
    """The original image's upright size: its stored ``width`` x ``height``, turned as ``image`` (its decoded,
    upright and perhaps reduced copy) was."""
    if abs(image.width * width - image.height * height) < abs(image.width * height - image.height * width):
        return height, width
    return width, height


def detecting_at(recognizer, scale: float):
    """``recognizer`` for an image reduced by ``scale``: its smallest face to find, reduced alike (the same detector
    passes as on the original); the recognizer itself when nothing was reduced."""
    if scale == 1 or not getattr(recognizer, "min_face", None):
        return recognizer
    reduced = copy.copy(recognizer)  # shares the networks; only this request's min_face differs
    reduced.min_face = recognizer.min_face / scale
    return reduced


def in_original_pixels(face, scale_x: float, scale_y: float, size: tuple[int, int], thresholds) -> dict:
    """A face found in a reduced copy, its coordinates and ``face_size`` (hence its ``small`` quality issue) in the
    original image's pixels; the face itself when nothing was reduced."""
    result = face.to_dict()
    if scale_x == scale_y == 1:
        return result

    def scaled(values: Sequence[float]) -> list[float]:
        return [round(v * (scale_x, scale_y)[i % 2], 1) for i, v in enumerate(values)]

    # The box was clipped to the reduced copy: clipped to the original it stays within it whatever the rounding.
    result["box"] = [min(v, size[i % 2]) for i, v in enumerate(scaled(face.box))]
    result["landmarks"] = None if face.landmarks is None else [scaled(point) for point in face.landmarks]
    result["regions"] = {region: scaled(box) for region, box in face.regions.items()}
    x1, y1, x2, y2 = result["box"]
    result["face_size"] = round(max(min(x2 - x1, y2 - y1), 0.0), 1)
    issues = quality_issues(result["face_size"], face.score, face.sharpness, face.roll, face.yaw, thresholds)
    result["quality"], result["quality_issues"] = ("low" if issues else "good"), issues
    return result


# -- the process's memory ---------------------------------------------------------------------------------------

M_ARENA_MAX = -8  # glibc's mallopt parameter


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def limit_allocator(arenas: int = 2) -> bool:
    """Let glibc's allocator keep at most ``arenas`` arenas (as ``MALLOC_ARENA_MAX`` would, for the arenas created
    from now on): each worker thread otherwise gets its own, and the memory freed in it stays with it. Call it
    before the server starts its threads. False where the C library is not glibc, or where ``MALLOC_ARENA_MAX`` is
    set (the allocator has followed it from the start)."""
    libc = _libc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def release_memory() -> None:
    """Hand the memory that a request freed back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
