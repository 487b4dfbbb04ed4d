"""load_rgb turns every image kind into correct 8-bit RGB, and every bad file into an error naming it."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msfer.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    image_header,
    load_rgb,
    load_rgb_array,
    rgb_from_array,
    to_upright_rgb,
)
from msfer.errors import MsferError


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 5), 77, np.uint8), "L").save(path)
    image = load_rgb(path)
    assert image.size == (5, 4)
    assert (pixels(image) == 77).all()


def test_palette_colours_are_looked_up(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(path)
    assert pixels(load_rgb(path)).tolist() == [[[10, 20, 30], [200, 100, 50]]]


def test_palette_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "palette_transparent.png"
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(path, transparency=0)
    assert pixels(load_rgb(path)).tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    result = pixels(load_rgb(path))
    assert result[0, 0].tolist() == [255, 0, 0]  # opaque: unchanged
    assert result[0, 1].tolist() == [255, 255, 255]  # transparent: white, not the hidden blue
    assert np.abs(result[0, 2] - 127).max() <= 1  # half black over white: mid grey


def test_grey_with_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8), "LA").save(path)
    assert pixels(load_rgb(path)).tolist() == [[[40, 40, 40], [255, 255, 255]]]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(np.array([[0, 257 * 100, 32896, 65535]], np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16 bit
    assert pixels(load_rgb(path))[0, :, 0].tolist() == [0, 100, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high, left half red, right half blue; EXIF 6 = show rotated 90 degrees clockwise,
    # which puts the stored left (red) at the top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    image = load_rgb(path)
    assert image.size == (20, 40)
    result = pixels(image)
    assert result[5, 10, 0] > 200 and result[5, 10, 2] < 60  # top: red
    assert result[35, 10, 2] > 200 and result[35, 10, 0] < 60  # bottom: blue
    assert image_header(path) == (40, 20, "RGB")  # the header reports the size as stored


def test_heic_is_read_upright_through_the_plugin(tmp_path):
    # What iPhones write: HEIC, here stored landscape with EXIF 6 (turn 90 degrees clockwise to show it).
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "IMG_0001.HEIC"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    assert ".heic" in IMAGE_EXTENSIONS and ".heif" in IMAGE_EXTENSIONS
    result = pixels(load_rgb(path))
    assert result.shape == (64, 32, 3)  # portrait, as shown
    assert result[10, 16, 0] > 200 and result[10, 16, 2] < 60  # top: red
    assert result[54, 16, 2] > 200 and result[54, 16, 0] < 60  # bottom: blue


def test_without_the_heif_plugin_other_formats_read_and_heic_names_the_missing_package(tmp_path):
    # A machine given only src/ (tools/gpu_experiments.py on a bare GPU machine) may lack pillow-heif: importing
    # msfer must still work, and a HEIC file is listed and refused by name, not passed over or crashing the import.
    png, heic = tmp_path / "face.png", tmp_path / "IMG_0002.HEIC"
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(png)
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(heic, quality=90)  # written here, with the plugin
    script = f"""
import sys
sys.modules["pillow_heif"] = None  # as if not installed: its import raises ImportError
from msfer.data.images import IMAGE_EXTENSIONS, UnreadableImageError, load_rgb
assert ".heic" in IMAGE_EXTENSIONS
assert load_rgb({str(png)!r}).size == (8, 8)
try:
    load_rgb({str(heic)!r})
except UnreadableImageError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert done.returncode == 0, done.stderr
    assert str(heic) in done.stdout and "pillow-heif" in done.stdout and "not installed" in done.stdout


def test_a_pil_image_gets_the_rules_a_path_gets(tmp_path):
    stored = np.zeros((20, 40, 4), np.uint8)
    stored[:, :20] = (255, 0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    Image.fromarray(stored, "RGBA").save(path, exif=exif)
    with Image.open(path) as image:
        from_object = to_upright_rgb(image)
    assert from_object.mode == "RGB" and pixels(from_object).tolist() == pixels(load_rgb(path)).tolist()
    assert from_object.size == (20, 40) and pixels(from_object)[35, 10].tolist() == [255, 255, 255]  # alpha on white
    assert pixels(to_upright_rgb(from_object)).tolist() == pixels(from_object).tolist()  # never turned twice


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # no cyan, full magenta+yellow: red
    red, green, blue = pixels(load_rgb(path))[4, 4]
    assert red > 230 and green < 30 and blue < 30


def test_load_rgb_array_is_uint8_hwc(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (6, 3), 9).save(path)
    array = load_rgb_array(path)
    assert array.dtype == np.uint8 and array.shape == (3, 6, 3) and (array == 9).all()


def good_jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.jpg", b"", "empty file"),
        ("truncated.jpg", good_jpeg_bytes()[:400], "cannot decode"),
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "cannot decode"),
        ("notes.jpg", b"this is a text file, not a picture\n", "cannot decode"),
    ],
)
def test_bad_files_raise_an_error_naming_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=expected) as caught:
        load_rgb(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, MsferError)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(UnreadableImageError, match="no such image file") as caught:
        load_rgb(tmp_path / "absent.jpg")
    assert "absent.jpg" in str(caught.value)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is now over twice the limit
    with pytest.raises(UnreadableImageError, match="decompression bomb"):
        load_rgb(path)


def test_rgb_from_array_accepts_grey_and_rgb():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert pixels(rgb_from_array(grey))[:, :, 1].tolist() == grey.tolist()
    colour = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    assert pixels(rgb_from_array(colour)).tolist() == colour.tolist()


@pytest.mark.parametrize("array", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 4), np.uint8)])
def test_rgb_from_array_rejects_other_shapes_and_types(array):
    with pytest.raises(ValueError):
        rgb_from_array(array)
