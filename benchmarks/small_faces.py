"""Small faces in large photos: faces found and photos/s, with and without the fine detection pass.

    python benchmarks/small_faces.py [--faces 40] [--face-px 80] [--repeats 2] [--out small_faces.json]

Builds a 4000 x 2600 "group photo": copies of the sample photo's face (src/msfer/samples/astronaut.jpg),
each scaled so that its RetinaFace box is ``--face-px`` wide, on a grid over a textured grey background.
A face counts as found when a detected box overlaps its known box by IoU >= 0.3; detections that match
no face are counted as false. Runs the recognizer as before this change (``min_face=None``: one pass on
a 640 px copy) and as by default now (``min_face=40``), plus both on an ordinary 640 x 480 photo with
one face, and prints faces found and photos/s (best of ``--repeats`` timed runs after a warm-up), end to
end (detect, crop, classify every face found) and for detection alone.
The classifier is the bundled model when present (random weights otherwise; speed does not depend on
the weights' values).
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

from msfer.data.images import load_rgb_array
from msfer.faces.retinaface import RetinaFaceDetector
from msfer.inference.recognizer import EmotionRecognizer

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "msfer" / "samples" / "astronaut.jpg"


def face_patch(detector: RetinaFaceDetector) -> tuple[np.ndarray, np.ndarray]:
    """The sample's face with a margin around it, and its RetinaFace box within that patch."""
    photo = load_rgb_array(SAMPLE)
    box = detector.detect([photo])[0][0].box
    width, height = box[2] - box[0], box[3] - box[1]
    x1, y1 = int(max(box[0] - 0.4 * width, 0)), int(max(box[1] - 0.3 * height, 0))
    x2, y2 = int(min(box[2] + 0.4 * width, photo.shape[1])), int(min(box[3] + 0.3 * height, photo.shape[0]))
    return photo[y1:y2, x1:x2], box - [x1, y1, x1, y1]


def group_photo(patch: np.ndarray, patch_box: np.ndarray, faces: int, face_px: int, width: int = 4000,
                height: int = 2600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB photo with ``faces`` copies of ``patch`` on a grid, and their face boxes (faces x 4)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (height // 8, width // 8, 3)).astype(np.float32)
    background = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 3), (width, height)) * 400 + 120
    photo = np.clip(background, 0, 255).astype(np.uint8)
    scale = face_px / (patch_box[2] - patch_box[0])
    small = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    columns = int(np.ceil(np.sqrt(faces * width / height)))
    rows = int(np.ceil(faces / columns))
    boxes = []
    for k in range(faces):
        cell_x, cell_y = (k % columns + 0.5) * width / columns, (k // columns + 0.5) * height / rows
        x = int(cell_x - small.shape[1] / 2 + rng.integers(-20, 21))
        y = int(cell_y - small.shape[0] / 2 + rng.integers(-20, 21))
        photo[y : y + small.shape[0], x : x + small.shape[1]] = small
        boxes.append(patch_box * scale + [x, y, x, y])
    return photo, np.array(boxes)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    top_left, bottom_right = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter)


def count(found: list, truth: np.ndarray) -> tuple[int, int]:
    """(faces of ``truth`` found, detections matching no face)."""
    if not found:
        return 0, 0
    detected = np.array([face.box for face in found], dtype=np.float64)
    matched = [iou(box, detected).max() >= 0.3 for box in truth]
    false = sum(iou(box, truth).max() < 0.3 for box in detected)
    return int(sum(matched)), int(false)


def photos_per_s(function, photo: np.ndarray, repeats: int) -> float:
    """Calls of ``function(photo)`` per second, best of ``repeats`` after a warm-up."""
    function(photo)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function(photo)
        best = min(best, time.perf_counter() - start)
    return 1.0 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=40, help="faces in the group photo (default 40)")
    parser.add_argument("--face-px", type=int, default=80, help="face box width in pixels (default 80)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the best is kept (default 2)")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    from msfer.weights import BUNDLED_MODEL

    weights = BUNDLED_MODEL
    if not BUNDLED_MODEL.is_file():
        from msfer.model.checkpoint import random_checkpoint

        weights = random_checkpoint(Path(tempfile.mkdtemp(prefix="msfer_bench_")) / "random.pt")
    detector = RetinaFaceDetector()
    patch, patch_box = face_patch(detector)
    group, truth = group_photo(patch, patch_box, args.faces, args.face_px)
    ordinary = np.full((480, 640, 3), 90, np.uint8)
    ordinary[90 : 90 + patch.shape[0], 240 : 240 + patch.shape[1]] = patch

    machine = platform.processor() or platform.machine()
    results: dict = {"machine": f"{machine}, {torch.get_num_threads()} torch threads",
                     "group_photo": f"{group.shape[1]}x{group.shape[0]}, {args.faces} faces of {args.face_px} px"}
    for name, min_face in (("before", None), ("after", 40)):
        recognizer = EmotionRecognizer(weights, detector=detector, min_face=min_face)
        found, false = count(recognizer.predict(group), truth)
        results[f"{name}_faces_found"] = f"{found}/{args.faces}"
        results[f"{name}_false_detections"] = false
        results[f"{name}_group_photos_per_s"] = round(photos_per_s(recognizer.predict, group, args.repeats), 2)
        detect_only = lambda photo, recognizer=recognizer: recognizer.detect([photo])  # noqa: E731
        results[f"{name}_group_photos_per_s_detection_only"] = round(photos_per_s(detect_only, group, args.repeats), 2)
        results[f"{name}_640x480_photos_per_s"] = round(photos_per_s(recognizer.predict, ordinary, args.repeats * 5), 1)
    for key, value in results.items():
        print(f"{key:32s} {value}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
