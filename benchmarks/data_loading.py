"""Images/s for decoding and augmenting FER2013 train through a DataLoader.

    python benchmarks/data_loading.py --data /path/to/fer2013 [--size 112] [--batch-size 256] [--workers 2 1]

Measured here (2 shared cores, 2026-11-27): 2,145 images/s with 2 workers, 2,641 with 1 (target >= 1,500).

What is timed is what training does per batch, minus the model: JPEG decoding in the
DataLoader workers (``FaceDataset``, no in-memory cache, so every image is decoded), then
the batched box-aware augmentation (crop/scale/rotate/flip, colour, erasing, normalise)
on the CPU, to ``--size`` pixels. Prints one line per setting; the first batches (worker
start-up) are not timed.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from msfer.data.readers import read_dataset
from msfer.engine.augment import BatchAugment
from msfer.engine.config import DEFAULTS
from msfer.engine.datasets import FaceDataset
from msfer.labels import REGION_NAMES


def measure(dataset: FaceDataset, size: int, batch_size: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    augment = BatchAugment(DEFAULTS["data"]["augment"], size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                           REGION_NAMES, torch.Generator().manual_seed(0))
    warmup, count, started = 2, 0, 0.0
    for step, batch in enumerate(loader):
        if step == warmup:
            started, count = time.perf_counter(), 0
        augment(batch["image"], batch["boxes"], batch["box_valid"], grey=batch["grey"])
        count += len(batch["image"])
        if step == warmup + batches:
            break
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 root (folder tree or CSV)")
    parser.add_argument("--size", type=int, default=112, help="model input size (default 112)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="DataLoader worker counts to try (default 2)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per setting (default 30)")
    args = parser.parse_args()
    samples = [s for s in read_dataset(args.data, "fer2013").samples if s.split == "train"]
    dataset = FaceDataset(samples, image_size=48, region_names=REGION_NAMES)
    print(f"FER2013 train: {len(samples)} images, decoded at 48 px, augmented to {args.size} px, "
          f"batch {args.batch_size}, {torch.get_num_threads()} torch threads")
    for workers in args.workers:
        rate = measure(dataset, args.size, args.batch_size, workers, args.batches)
        print(f"workers={workers}: {rate:,.0f} images/s (decode + augment)")


if __name__ == "__main__":
    main()
