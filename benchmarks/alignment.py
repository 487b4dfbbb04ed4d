"""Does aligning (or re-cropping) the detected face help? Accuracy of the whole pipeline on FER2013 faces.

    python benchmarks/alignment.py --data /path/to/fer2013 [--weights W] [--out alignment.json]

Each face of the fixed 500-image public_test sample (the one the bundled model's record
uses) is enlarged 3x and set in a grey canvas twice its size, so RetinaFace must find it
as in a photo. The pipeline (detect, crop, classify the largest face; a missed face counts
as wrong) runs with roll alignment off and on and at several crop scales, next to
classifying the original crops directly (what the model was trained on).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from msfer.data.readers import read_dataset
from msfer.inference.recognizer import EmotionRecognizer
from msfer.labels import EMOTIONS
from msfer.weights import fixed_sample


def as_photo(face: Image.Image) -> np.ndarray:
    side = face.width * 3
    canvas = Image.new("RGB", (side * 2, side * 2), (128, 128, 128))
    canvas.paste(face.resize((side, side), Image.BICUBIC), (side // 2, side // 2))
    return np.asarray(canvas)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 folder tree")
    parser.add_argument("--weights", help="checkpoint (default: the bundled model)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    samples = fixed_sample(read_dataset(args.data, "fer2013").samples)
    faces = [sample.load() for sample in samples]
    truth = np.array([sample.label for sample in samples])
    photos = [as_photo(face) for face in faces]
    results = {}
    direct = EmotionRecognizer(args.weights).classify_faces(faces)
    results["original crops, no detection"] = float(np.mean([EMOTIONS.index(r.label) for r in direct] == truth))
    for align in (False, True):
        for crop_scale in (0.9, 1.0, 1.2):
            recognizer = EmotionRecognizer(args.weights, align=align, crop_scale=crop_scale)
            found = recognizer.predict_batch(photos)
            predicted = np.array([EMOTIONS.index(f[0].label) if f else -1 for f in found])
            key = f"detect + crop (scale {crop_scale}), align={'on' if align else 'off'}"
            results[key] = float(np.mean(predicted == truth))
    results["faces missed"] = int(sum(not f for f in found))  # detection does not depend on crop or alignment
    for key, value in results.items():
        print(f"{key:45s} {value if isinstance(value, int) else f'{100 * value:.1f}%'}")
    if args.out:
        args.out.write_text(json.dumps({"n": len(samples), "accuracy": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
