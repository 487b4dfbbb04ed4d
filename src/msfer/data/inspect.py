"""``msfer datasets inspect``: what a dataset holds and what is wrong with it.

The report is a plain dict (printed as one JSON object with ``--json``): ``format``,
``root``, ``samples``, ``splits`` ({split: {class: count}}, canonical class names in
``EMOTIONS`` order), ``skipped`` (reason -> count), ``image_sizes`` and ``problems``.

Image sizes come from file headers (size as stored, before EXIF rotation) of at most
``size_sample`` images drawn with a fixed seed, so a 400k-image dataset is measured in
seconds; the report says how many were measured. ``check_images`` instead decodes every
image, as training will, and lists the ones that fail.
"""
from __future__ import annotations

import random
import statistics
from collections import Counter

from tqdm import tqdm

from ..labels import EMOTIONS
from .images import UnreadableImageError, image_header, load_rgb
from .readers import DatasetError, DatasetIndex
from .readers._index import PROBLEMS_LISTED_PER_REASON
from .samples import Sample

DEFAULT_SIZE_SAMPLE = 2000


def inspect_dataset(
    index: DatasetIndex, split: str | None = None, size_sample: int = DEFAULT_SIZE_SAMPLE, check_images: bool = False
) -> dict:
    """The report of ``index`` (one ``split`` of it, if given); see the module docstring."""
    counts = index.counts()
    samples = index.samples
    if split is not None:
        if split not in counts:
            raise DatasetError(f"{index.root} has no split {split!r}; its splits: {', '.join(counts) or 'none'}")
        counts = {split: counts[split]}
        samples = [sample for sample in samples if sample.split == split]
    image_sizes, unreadable = _measure(samples, size_sample, check_images)
    return {
        "format": index.format,
        "root": str(index.root),
        "samples": len(samples),
        "splits": counts,
        "skipped": dict(sorted(index.skipped.items())),
        "image_sizes": image_sizes,
        "unreadable_images": len(unreadable),
        "problems": index.problems + _listed(unreadable),
    }


def _measure(samples: list[Sample], size_sample: int, check_images: bool) -> tuple[dict, list[str]]:
    """Size statistics over all samples (``check_images``: decoded) or a seeded sample of headers."""
    chosen = samples if check_images or len(samples) <= size_sample else random.Random(0).sample(samples, size_sample)
    widths, heights, modes, unreadable = [], [], Counter(), []
    action = "decoding images" if check_images else "reading image headers"
    for sample in tqdm(chosen, desc=action, unit="img", leave=False, disable=len(chosen) < 1000):
        try:
            width, height, mode = _size_and_mode(sample, check_images)
        except UnreadableImageError as error:
            unreadable.append(str(error))
            continue
        widths.append(width)
        heights.append(height)
        modes[mode] += 1
    sizes: dict = {"measured": len(widths), "of": len(samples), "decoded": check_images}
    for name, values in (("width", widths), ("height", heights)):
        if values:
            sizes[name] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    sizes["modes"] = dict(modes.most_common())
    return sizes, unreadable


def _size_and_mode(sample: Sample, decode: bool) -> tuple[int, int, str]:
    if sample.pixels is not None:
        height, width = sample.pixels.shape[:2]
        return width, height, "L" if sample.pixels.ndim == 2 else "RGB"
    if decode:
        load_rgb(sample.path)
    return image_header(sample.path)


def _listed(unreadable: list[str]) -> list[str]:
    listed = unreadable[:PROBLEMS_LISTED_PER_REASON]
    if len(unreadable) > len(listed):
        listed.append(f"{len(unreadable) - len(listed)} more unreadable images, not listed")
    return listed


def format_report(report: dict) -> str:
    """The report as text for a terminal: a count table, skips, sizes, problems."""
    lines = [f"{report['format']} dataset at {report['root']}: {report['samples']:,} samples", ""]
    name_width = max([len("split"), len("total")] + [len(split) for split in report["splits"]])
    columns = [*EMOTIONS, "total"]
    widths = [max(len(column), 6) for column in columns]

    def row(name: str, values: list) -> str:
        cells = "  ".join(f"{value:>{width}}" for value, width in zip(values, widths))
        return f"{name:<{name_width}}  {cells}"

    lines.append(row("split", columns))
    for split, per_class in report["splits"].items():
        lines.append(row(split, [*per_class.values(), sum(per_class.values())]))
    if len(report["splits"]) > 1:
        totals = [sum(per_class[name] for per_class in report["splits"].values()) for name in EMOTIONS]
        lines.append(row("total", [*totals, sum(totals)]))
    skipped = report["skipped"]
    lines.append("")
    lines.append("skipped: " + (", ".join(f"{reason} {n:,}" for reason, n in skipped.items()) if skipped else "none"))
    lines.append(_format_sizes(report["image_sizes"]))
    problems = report["problems"]
    lines.append(f"problems ({len(problems)}):" if problems else "problems: none")
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines)


def _format_sizes(sizes: dict) -> str:
    how = "decoded" if sizes["decoded"] else "headers read, sizes as stored"
    head = f"image sizes ({sizes['measured']:,} of {sizes['of']:,} images, {how})"
    if "width" not in sizes:
        return f"{head}: no image could be read"
    span = "  ".join(
        f"{name} {sizes[name]['min']}/{sizes[name]['median']:g}/{sizes[name]['max']}" for name in ("width", "height")
    )
    modes = ", ".join(f"{mode} {n:,}" for mode, n in sizes["modes"].items())
    return f"{head}: {span} (min/median/max); modes: {modes}"
