"""How much does a model's reading of photos depend on their colour? The whole pipeline on each photo as it is and
turned grey.

    python scripts/colour_dependence.py DATA/sfew --split val --weights v1=v1.pt v2=v2.pt [--out grey.json]

For each model and each of the two versions of every photo of a folder dataset (``<split>/<class>/*``): overall
accuracy (a photo without a face counts as wrong), how many photos are called neutral and surprise, and neutral
recall. Grey is ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B) in all three channels, as FER2013's grey crops
reach the network; the whole pipeline, detection included, sees the grey photo. Decision rule argmax.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from msfer import EMOTIONS, EmotionRecognizer
from msfer.data.readers import read_dataset
from msfer.files import write_text

LUMA = np.array([0.299, 0.587, 0.114])


def grey(array: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> the same size, each channel the BT.601 luma."""
    return np.repeat((array @ LUMA).round().clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a folder dataset: <split>/<class>/<image>")
    parser.add_argument("--split", default="val", help="the split to read (default val)")
    parser.add_argument("--weights", nargs="+", required=True, metavar="NAME=PATH", help="the models")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)

    samples = [s for s in read_dataset(args.data, "folder").samples if s.split == args.split]
    truth = np.array([s.label for s in samples])
    neutral, surprise = EMOTIONS.index("neutral"), EMOTIONS.index("surprise")
    result = {}
    for text in args.weights:
        name, _, path = text.partition("=")
        recognizer = EmotionRecognizer(path, decision="argmax")
        for version, convert in (("colour", lambda a: a), ("grey", grey)):
            predicted = []
            for sample in tqdm(samples, desc=f"{name} {version}", unit="img"):
                faces = recognizer.predict(convert(np.asarray(sample.load())))
                predicted.append(EMOTIONS.index(faces[0].label) if faces else -1)
            predicted = np.array(predicted)
            result[f"{name} {version}"] = {
                "n": len(samples), "overall_accuracy": float((predicted == truth).mean()),
                "called_neutral": int((predicted == neutral).sum()), "truly_neutral": int((truth == neutral).sum()),
                "neutral_recall": float((predicted[truth == neutral] == neutral).mean()) if (truth == neutral).any()
                else None,
                "called_surprise": int((predicted == surprise).sum())}
    print("| model | photos | overall % | called neutral (truly) | neutral recall % | called surprise |")
    print("|---|---|---|---|---|---|")
    for key, row in result.items():
        recall = "-" if row["neutral_recall"] is None else round(100 * row["neutral_recall"])
        print(f"| {key} | {row['n']} | {100 * row['overall_accuracy']:.1f} | {row['called_neutral']} "
              f"({row['truly_neutral']}) | {recall} | {row['called_surprise']} |")
    if args.out is not None:
        write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
