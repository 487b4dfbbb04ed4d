"""Inference speed on this machine: classifier crops/s, end-to-end photos/s and video frames/s.

    python benchmarks/inference_speed.py [--weights W | --model NAME] [--out inference_speed.json]

Measures, with PyTorch and ONNX Runtime:
* classifier face crops/s at batch 1 and 32 (real astronaut face crops, preprocessed);
* end to end photos/s on 640x480 single-face JPEG files (decode, detect, crop, classify), batch 32;
* frames/s on a 640x480 single-face video (MJPG, 4 s at 25 fps; decode, detect, crop, classify,
  track), processing every frame, at detector sizes 640 (full) and 320 (the frame downscaled).
Without --weights it uses the bundled model, or a random-weight model of the same architecture
(msfer_mobilenetv2) if the bundled file is absent: speed does not depend on the weights' values.
--model NAME times a random-weight model of any registered architecture (e.g. msfer_faceres).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from skimage.data import astronaut

from msfer.inference.recognizer import EmotionRecognizer
from msfer.inference.video import VideoSource, predict_video
from msfer.model.checkpoint import random_checkpoint

VIDEO_FRAMES = 100


def single_face_frame(shift: int = 0) -> np.ndarray:
    """640 x 480 RGB with the astronaut's head (about 150 px wide) near the centre."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    head = astronaut()[0:300, 100:360]
    frame[80:380, 190 + shift : 450 + shift] = head
    return frame


def rate(function, items: int, repeats: int) -> float:
    """Items per second of ``function()`` (which processes ``items``), best of ``repeats`` after a warm-up."""
    function()
    best = min(_timed(function) for _ in range(repeats))
    return items / best


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--weights", type=Path, help="checkpoint (default: bundled, else random weights)")
    which.add_argument("--model", help="time a random-weight model of this registered architecture instead")
    parser.add_argument("--out", type=Path, default=Path("inference_speed.json"), help="JSON file for the results")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is kept (default 3)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="msfer_bench_"))
    from msfer.weights import BUNDLED_MODEL

    if args.model:
        weights = random_checkpoint(work / "random.pt", args.model)
    else:
        weights = args.weights or (BUNDLED_MODEL if BUNDLED_MODEL.is_file() else random_checkpoint(work / "random.pt"))
    results: dict = {"weights": f"random {args.model}" if args.model else str(weights),
                     "machine": f"{platform.processor() or platform.machine()}, "
                     f"{torch.get_num_threads()} torch threads", "torch": torch.__version__}
    recognizers = {backend: EmotionRecognizer(weights, backend=backend) for backend in ("torch", "onnx")}

    reference = recognizers["torch"]
    frame = single_face_frame()
    crop = reference.crop_face(frame, reference.detect([frame])[0][0])[0]
    for backend, recognizer in recognizers.items():
        for batch in (1, 32):
            inputs = reference.spec.normalise(np.stack([crop] * batch))
            results[f"classifier_{backend}_batch{batch}_crops_per_s"] = round(
                rate(lambda recognizer=recognizer, inputs=inputs: recognizer.classifier(inputs), batch,
                     args.repeats * (8 if batch == 1 else 1)), 1)

    photos = []
    for k in range(32):
        path = work / f"photo{k}.jpg"
        Image.fromarray(single_face_frame(shift=k)).save(path, quality=90)
        photos.append(path)
    for backend, recognizer in recognizers.items():
        results[f"end_to_end_{backend}_photos_per_s"] = round(
            rate(lambda recognizer=recognizer: recognizer.predict_batch(photos), len(photos), args.repeats), 1)

    video_path = work / "video.avi"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for k in range(VIDEO_FRAMES):
        writer.write(cv2.cvtColor(single_face_frame(shift=k % 60), cv2.COLOR_RGB2BGR))
    writer.release()
    for backend, recognizer in recognizers.items():
        for detect_size in (640, 320):
            recognizer.detect_size = detect_size

            def run_video(recognizer=recognizer) -> None:
                with VideoSource(video_path) as video:
                    faces = sum(len(frame.faces) for frame in predict_video(recognizer, video))
                assert faces == VIDEO_FRAMES, \
                    f"expected one face in each of the {VIDEO_FRAMES} frames, found {faces} in total"

            results[f"video_{backend}_detect{detect_size}_frames_per_s"] = round(rate(run_video, VIDEO_FRAMES, 1), 1)
            recognizer.detect_size = 640

    for key, value in results.items():
        print(f"{key:48s} {value}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
