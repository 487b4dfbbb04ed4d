"""End-to-end speed of ``msfer annotate`` (decode, detect, derive, write) in images/s.

    python benchmarks/annotate_speed.py /path/to/fer2013 [--limit N] [--batch-size B] [--threads T]

Runs the command's own pipeline over FER2013 train (per-class JPEG folders) into a
temporary file, after one warm-up batch, and prints images/s. The target on a
2-core CPU is 400 images/s (FER2013 train's 28,709 images in under 2 minutes). The
CPU time per image is printed too: unlike images/s it hardly depends on other jobs
sharing the machine, and on idle cores images/s is about cores / CPU-seconds per image.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from msfer.data.readers import read_dataset
from msfer.faces.retinaface import RetinaFaceDetector
from msfer.regions.annotations import AnnotationWriter
from msfer.regions.annotator import Annotator, decode, prefetched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fer2013", type=Path, help="FER2013 folder with train/<class>/*.jpg")
    parser.add_argument("--limit", type=int, default=0, help="annotate only the first N train images (0: all)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per detector call")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    args = parser.parse_args()

    samples = [s for s in read_dataset(args.fer2013, "fer2013").samples if s.split == "train"]
    samples = samples[: args.limit or None]
    annotator = Annotator(RetinaFaceDetector(score_threshold=0.2, threads=args.threads))
    annotator.annotate(samples[: args.batch_size], [decode(s) for s in samples[: args.batch_size]])  # warm-up
    batches = [samples[i : i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
    with tempfile.TemporaryDirectory() as folder, AnnotationWriter(Path(folder) / "bench.jsonl") as writer:
        started, cpu_started = time.perf_counter(), time.process_time()
        for batch, images in prefetched(batches, decode):
            writer.write(annotator.annotate(batch, images))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    accepted = sum(record["status"] == "ok" for record in writer.records.values())
    print(f"{len(samples)} images in {elapsed:.1f} s: {len(samples) / elapsed:.0f} images/s "
          f"(batch {args.batch_size}, accepted {accepted / len(samples):.1%}); "
          f"{1000 * cpu / len(samples):.2f} CPU-ms per image, {cpu / elapsed:.2f} cores busy on average")


if __name__ == "__main__":
    main()
