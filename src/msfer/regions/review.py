"""A contact sheet of annotations for a person to check by eye.

Random accepted images with their regions and landmarks drawn, then random images
that were not accepted, captioned with their status (rejected ones still show the
regions they would have had). Drawn with Pillow: no plotting layer is needed for a
grid of images and boxes. The sample is random but seeded, so a sheet can be redrawn.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..errors import MsferError
from ..files import atomic_output
from ..outputs import printable
from .annotations import STATUS_OK

TILE = 144
CAPTION = 26
COLUMNS = 8
REGION_COLOURS = {
    "face": (0, 220, 0), "left_eye": (255, 60, 60), "right_eye": (60, 140, 255), "eyes": (255, 60, 255),
    "nose": (255, 220, 0), "mouth": (0, 230, 230),
}
LANDMARK_COLOUR = (255, 255, 255)


def _tile(sample, record: dict, font: ImageFont.ImageFont) -> Image.Image:
    """One image enlarged to the tile, its regions and landmarks drawn, its status below."""
    tile = Image.new("RGB", (TILE, TILE + CAPTION), (30, 30, 30))
    draw = ImageDraw.Draw(tile)
    try:
        image = sample.load()
    except (MsferError, ValueError):
        image = None
    if image is not None:
        scale = TILE / max(image.size)
        tile.paste(image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR))
        for name, (x1, y1, x2, y2) in (record.get("regions") or {}).items():
            draw.rectangle([x1 * scale, y1 * scale, x2 * scale, y2 * scale],
                           outline=REGION_COLOURS.get(name, (255, 255, 255)))
        for x, y in record.get("landmarks") or []:
            draw.ellipse([x * scale - 1.5, y * scale - 1.5, x * scale + 1.5, y * scale + 1.5], fill=LANDMARK_COLOUR)
    score = record.get("score")
    status = record["status"].removeprefix("rejected:")
    draw.text((3, TILE + 2), printable(Path(sample.id).name)[:24], fill=(200, 200, 200), font=font)
    draw.text((3, TILE + 13), status + (f" {score:.2f}" if score is not None else ""),
              fill=(120, 255, 120) if record["status"] == STATUS_OK else (255, 140, 120), font=font)
    return tile


def _section(title: str, tiles: list[Image.Image], font: ImageFont.ImageFont) -> Image.Image:
    rows = max(1, -(-len(tiles) // COLUMNS))
    section = Image.new("RGB", (COLUMNS * TILE, 20 + rows * (TILE + CAPTION)), (0, 0, 0))
    ImageDraw.Draw(section).text((4, 4), title, fill=(255, 255, 255), font=font)
    for k, tile in enumerate(tiles):
        section.paste(tile, ((k % COLUMNS) * TILE, 20 + (k // COLUMNS) * (TILE + CAPTION)))
    return section


def write_review_sheet(
    path: str | os.PathLike,
    samples: Sequence,
    records: dict[str, dict],
    accepted: int = 32,
    rejected: int = 24,
    seed: int = 0,
) -> None:
    """Draw ``accepted`` random accepted images and ``rejected`` random others into one PNG at ``path``."""
    rng = random.Random(seed)
    annotated = [(sample, records[sample.id]) for sample in samples if sample.id in records]
    good = [pair for pair in annotated if pair[1]["status"] == STATUS_OK]
    bad = [pair for pair in annotated if pair[1]["status"] != STATUS_OK]
    font = ImageFont.load_default()
    legend = "  ".join(f"{name}" for name in REGION_COLOURS)
    sections = [
        _section(f"accepted: {len(good)} of {len(annotated)} (regions: {legend}; dots: landmarks)",
                 [_tile(s, r, font) for s, r in rng.sample(good, min(accepted, len(good)))], font),
        _section(f"not accepted: {len(bad)} of {len(annotated)} (status and score below each)",
                 [_tile(s, r, font) for s, r in rng.sample(bad, min(rejected, len(bad)))], font),
    ]
    sheet = Image.new("RGB", (COLUMNS * TILE, sum(s.height for s in sections)))
    top = 0
    for section in sections:
        sheet.paste(section, (0, top))
        top += section.height
    path = Path(path)
    try:
        with atomic_output(path) as temporary:
            sheet.save(temporary)
    except ValueError as error:  # Pillow knows no image format by that extension
        raise MsferError(f"cannot write review sheet {printable(path)}: {error}") from None
