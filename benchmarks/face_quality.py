"""How accuracy varies with face quality: the measurements behind msfer's quality thresholds.

    python benchmarks/face_quality.py --fer2013 /data/fer2013 --tcce /data/tcce --out docs/quality.json [--weights W]

Runs the whole pipeline (detect, crop, classify; the largest face of each image, decision
rule argmax) and records every face's quality measures (:func:`msfer.faces.quality.face_quality`)
and whether its label is right.

**Natural variation**, on ``fer2013_public_test`` (FER2013 public_test, all 3,589 48 px crops,
each enlarged to 128 px as ``msfer annotate`` does: at 48 px RetinaFace finds only about half
the faces) and ``tcce_val`` (TCCE val, 195 256 x 256 colour photos, as they are). Within a
dataset the measures also vary with the expression itself (a disgusted face reads as more
turned, an open mouth lengthens the face box) and some expressions are recognised far worse
than others, so each group of faces gets, beside its ``accuracy``, the accuracy its class mix
alone predicts (``expected``: the mean over its faces of their class's accuracy in the
dataset) and ``adjusted`` = accuracy - expected. Per measure: quartiles, and a grid of
thresholds with the faces each would flag and keep.

**Controlled degradation** of the TCCE val photos: ``shrink`` (area averaging to 1/2 ... 1/8
of their size: faces of about 80 down to 18 px; neither dataset holds small faces), ``blur``
(Gaussian, sigma 2 ... 8 px) and ``rotate`` (10 ... 60 degrees about the centre, edges
replicated). The same faces at every level, so only the degradation differs: per level the
median measure and the accuracy, against the photos as they are (``change``).

**Suggested thresholds** (the rule msfer's ``QualityThresholds`` follow, ``--gap`` 5 points):
face size, sharpness and roll are the median measure at the mildest degradation that costs at
least ``--gap`` points of accuracy; detector score and yaw, which cannot be degraded in a
controlled way, the loosest threshold whose flagged FER2013 faces (at least ``--min-flagged``,
30) are ``--gap`` points less accurate than their class mix predicts (None: no threshold
qualifies). ``chosen`` gives the accuracy of "good" and "low" faces under ``QualityThresholds``,
in each natural dataset and in each degradation over all its levels; ``confidence`` the
accuracy per band of the label's probability (the report's uncertain threshold). A face not
found counts in ``missed``, not in the accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from msfer.data.readers import read_dataset
from msfer.faces.quality import QUALITY_ISSUES, QualityThresholds, quality_issues
from msfer.faces.retinaface import resize_by
from msfer.inference.recognizer import EmotionRecognizer
from msfer.labels import EMOTIONS

FER_DETECT_SIZE = 128
NATURAL = ("fer2013_public_test", "tcce_val")
# Candidate thresholds per measure; "low" is below (size, score, sharpness) or above (|roll|, |yaw|) them.
GRID = {
    "face_size": [12, 16, 20, 24, 28, 32, 40, 48, 64],
    "score": [0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99],
    "sharpness": [5, 10, 20, 30, 50, 75, 100, 150, 200, 300],
    "abs_roll": [5, 10, 15, 20, 25, 30, 40, 45, 50],
    "abs_yaw": [5, 10, 15, 20, 25, 30, 40, 45, 50],
}
LOW_BELOW = {"face_size", "score", "sharpness"}
# Controlled degradations of the TCCE val photos: the measure each moves, and its levels.
DEGRADATIONS = {
    "shrink": ("face_size", (2, 3, 4, 6, 8)),
    "blur": ("sharpness", (2, 3, 4, 6, 8)),
    "rotate": ("abs_roll", (10, 20, 30, 45, 60)),
}
CONFIDENCE_BANDS = [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]


def degrade(image: np.ndarray, kind: str, level: float) -> np.ndarray:
    if kind == "shrink":
        return resize_by(image, 1 / level, cv2.INTER_AREA)
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), level)
    height, width = image.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), level, 1.0)
    return cv2.warpAffine(image, rotation, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def recognise(recognizer: EmotionRecognizer, images: list[np.ndarray], labels: list[int]) -> list[dict]:
    """One row per image: its largest face's measures and whether its label is right (``found`` False: no face)."""
    rows = []
    for start in range(0, len(images), recognizer.batch_size):
        batch = recognizer.predict_batch(images[start : start + recognizer.batch_size])
        for index, (faces, label) in enumerate(zip(batch, labels[start : start + recognizer.batch_size]), start):
            if not faces:
                rows.append({"image": index, "found": False, "label": label})
                continue
            face = faces[0]
            rows.append(
                {
                    "image": index,
                    "found": True,
                    "label": label,
                    "correct": EMOTIONS.index(face.label) == label,
                    "confidence": face.confidence,
                    "face_size": face.face_size,
                    "score": face.score,
                    "sharpness": face.sharpness,
                    "abs_roll": abs(face.roll),
                    "abs_yaw": abs(face.yaw),
                }
            )
    return rows


def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every dataset's rows (see :func:`recognise`), measured with the model; degraded rows carry ``level``."""
    recognizer = EmotionRecognizer(args.weights)
    fer = [s for s in read_dataset(args.fer2013, "fer2013").samples if s.split == "public_test"]
    tcce = [s for s in read_dataset(args.tcce, "folder").samples if s.split == "val"]
    tcce_images, tcce_labels = [np.asarray(s.load()) for s in tcce], [s.label for s in tcce]
    fer_images = [resize_by(np.asarray(s.load()), FER_DETECT_SIZE / 48, cv2.INTER_LINEAR) for s in fer]
    rows = {
        "fer2013_public_test": recognise(recognizer, fer_images, [s.label for s in fer]),
        "tcce_val": recognise(recognizer, tcce_images, tcce_labels),
    }
    for kind, (_, levels) in DEGRADATIONS.items():
        rows[kind] = [
            {**row, "level": level}
            for level in levels
            for row in recognise(recognizer, [degrade(image, kind, level) for image in tcce_images], tcce_labels)
        ]
    return rows


def accuracy(rows: list[dict]) -> float | None:
    return round(float(np.mean([row["correct"] for row in rows])), 4) if rows else None


def group(correct: np.ndarray, expected: np.ndarray, members: np.ndarray) -> dict:
    """Size, accuracy, class-mix expectation and their difference of the faces where ``members`` is true."""
    if not members.any():
        return {"n": 0, "accuracy": None, "expected": None, "adjusted": None}
    observed, mix = float(correct[members].mean()), float(expected[members].mean())
    return {
        "n": int(members.sum()),
        "accuracy": round(observed, 4),
        "expected": round(mix, 4),
        "adjusted": round(observed - mix, 4),
    }


def natural(rows: list[dict], gap: float, min_flagged: int) -> dict:
    """Quartiles and thresholds of every measure, class-mix adjusted; the chosen flag; accuracy per confidence band."""
    found = [row for row in rows if row["found"]]
    correct = np.array([row["correct"] for row in found], dtype=np.float64)
    labels = np.array([row["label"] for row in found])
    class_accuracy = {label: correct[labels == label].mean() for label in np.unique(labels)}
    expected = np.array([class_accuracy[label] for label in labels])
    summary = {"n": len(rows), "missed": len(rows) - len(found), "accuracy": accuracy(found), "measures": {}}
    for name, grid in GRID.items():
        values = np.array([row[name] for row in found], dtype=np.float64)
        edges = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
        quartiles = [
            {
                "from": round(float(edges[q]), 3),
                "to": round(float(edges[q + 1]), 3),
                **group(
                    correct,
                    expected,
                    (values >= edges[q]) & ((values < edges[q + 1]) if q < 3 else (values <= edges[q + 1])),
                ),
            }
            for q in range(4)
        ]
        thresholds, suggested = [], None
        for threshold in grid:
            flagged = values < threshold if name in LOW_BELOW else values > threshold
            entry = {
                "threshold": threshold,
                "flagged": group(correct, expected, flagged),
                "kept": group(correct, expected, ~flagged),
            }
            thresholds.append(entry)
            qualifies = entry["flagged"]["n"] >= min_flagged and entry["flagged"]["adjusted"] <= -gap / 100
            # The loosest qualifying threshold (the grid ascends): the highest for "below" measures,
            # the lowest for "above" ones.
            if qualifies and (name in LOW_BELOW or suggested is None):
                suggested = threshold
        summary["measures"][name] = {"quartiles": quartiles, "thresholds": thresholds, "suggested": suggested}
    low, issues = flags(found)
    summary["chosen"] = {
        "good": group(correct, expected, ~low),
        "low": group(correct, expected, low),
        "issues": {
            name: group(correct, expected, np.array([name in failed for failed in issues], dtype=bool))
            for name in QUALITY_ISSUES
        },
    }
    confidence = np.array([row["confidence"] for row in found])
    summary["confidence"] = [
        {
            "from": low_edge,
            "to": min(high_edge, 1.0),
            "n": int(inside.sum()),
            "accuracy": accuracy([row for row, member in zip(found, inside) if member]),
            "mean_confidence": round(float(confidence[inside].mean()), 4) if inside.any() else None,
        }
        for low_edge, high_edge in zip(CONFIDENCE_BANDS[:-1], CONFIDENCE_BANDS[1:])
        for inside in [(confidence >= low_edge) & (confidence < high_edge)]
    ]
    return summary


def flags(found: list[dict]) -> tuple[np.ndarray, list[list[str]]]:
    """The quality flag as msfer computes it from each face's measures and ``QualityThresholds``: low?, issues."""
    issues = [
        quality_issues(row["face_size"], row["score"], row["sharpness"], row["abs_roll"], row["abs_yaw"])
        for row in found
    ]
    return np.array([bool(failed) for failed in issues], dtype=bool), issues


def controlled(rows: list[dict], reference: list[dict], kind: str, gap: float) -> dict:
    """Per level of one degradation: median measure, misses, accuracy and its change against the photos as they are;
    and the accuracy of the faces flagged good and low over all levels."""
    name, levels = DEGRADATIONS[kind]
    original = {row["image"]: row for row in reference}
    summary: dict = {"measure": name, "levels": [], "suggested": None}
    for level in levels:
        found = [row for row in rows if row["level"] == level and row["found"]]
        paired = [row for row in found if original[row["image"]]["found"]]
        change = accuracy(paired) - accuracy([original[row["image"]] for row in paired])
        summary["levels"].append(
            {
                "level": level,
                "n": sum(row["level"] == level for row in rows),
                "missed": sum(row["level"] == level and not row["found"] for row in rows),
                f"median_{name}": round(float(np.median([row[name] for row in found])), 1),
                "accuracy": accuracy(found),
                "change": round(change, 4),
            }
        )
        if summary["suggested"] is None and change <= -gap / 100:
            summary["suggested"] = summary["levels"][-1][f"median_{name}"]
    found = [row for row in rows if row["found"]]
    low, _ = flags(found)
    summary["chosen"] = {
        "good": {"n": int((~low).sum()), "accuracy": accuracy([r for r, m in zip(found, low) if not m])},
        "low": {"n": int(low.sum()), "accuracy": accuracy([r for r, m in zip(found, low) if m])},
    }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer2013", type=Path, help="FER2013 folder tree (its public_test split is used)")
    parser.add_argument("--tcce", type=Path, help="TCCE folder tree (its val split is used)")
    parser.add_argument("--weights", help="checkpoint (default: the bundled model)")
    parser.add_argument(
        "--gap", type=float, default=5.0, help="accuracy points a threshold's faces must lose (default 5)"
    )
    parser.add_argument("--min-flagged", type=int, default=30, help="faces a threshold must flag to count (default 30)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--rows", type=Path, help="also write every face's measures here (JSON Lines)")
    parser.add_argument(
        "--from-rows", type=Path, help="summarise the rows a run wrote with --rows instead of measuring"
    )
    parser.add_argument("--note", default="", help="a note kept in the results (e.g. what --weights was)")
    args = parser.parse_args()

    started = time.time()
    if args.from_rows:
        rows: dict[str, list[dict]] = {}
        for line in args.from_rows.read_text().splitlines():
            row = json.loads(line)
            rows.setdefault(row.pop("dataset"), []).append(row)
    elif args.fer2013 is None or args.tcce is None:
        parser.error("give --fer2013 and --tcce (or --from-rows)")
    else:
        rows = measure(args)
        if args.rows:
            args.rows.write_text(
                "".join(json.dumps({"dataset": name, **row}) + "\n" for name, part in rows.items() for row in part)
            )
    results = {
        "weights": args.weights or "bundled",
        "note": args.note,
        "decision": "argmax",
        "thresholds": asdict(QualityThresholds()),
        "gap": args.gap,
        "min_flagged": args.min_flagged,
        "seconds": round(time.time() - started, 1),
        "natural": {name: natural(rows[name], args.gap, args.min_flagged) for name in NATURAL},
        "controlled": {kind: controlled(rows[kind], rows["tcce_val"], kind, args.gap) for kind in DEGRADATIONS},
    }
    results["suggested"] = {
        "face_size": results["controlled"]["shrink"]["suggested"],
        "sharpness": results["controlled"]["blur"]["suggested"],
        "abs_roll": results["controlled"]["rotate"]["suggested"],
        **{
            name: results["natural"]["fer2013_public_test"]["measures"][name]["suggested"]
            for name in ("score", "abs_yaw")
        },
    }
    for name in NATURAL:
        summary = results["natural"][name]
        print(
            f"{name}: {summary['n']} images, {summary['missed']} missed, accuracy {summary['accuracy']}; "
            f"good {summary['chosen']['good']}, low {summary['chosen']['low']}"
        )
    for kind, summary in results["controlled"].items():
        median = "median_" + summary["measure"]
        print(
            f"{kind}: "
            + ", ".join(
                f"{level['level']}: {level[median]} -> {level['accuracy']} "
                f"({100 * level['change']:+.1f}, {level['missed']} missed)"
                for level in summary["levels"]
            )
            + f"; good {summary['chosen']['good']}, "
            f"low {summary['chosen']['low']}"
        )
    print(f"suggested thresholds: {results['suggested']}; in QualityThresholds: {results['thresholds']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
