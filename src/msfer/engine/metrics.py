"""Classification and region-detection metrics over a whole split, and their report.

Every number is computed from the complete list of predictions, never averaged over
batches. ``mean_class_accuracy`` is the mean of per-class recall over the classes that
occur in the split (a class with no sample has no recall; counting it as 0 or 1 would
invent a number).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..files import atomic_output, write_text
from ..model.boxes import box_iou_pairs


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """``n``, ``overall_accuracy``, ``mean_class_accuracy``, ``per_class`` and ``confusion_matrix``.

    The confusion matrix has the true classes as rows and the predicted ones as columns.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    matrix = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    correct = np.diag(matrix)
    recall = np.divide(correct, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(correct, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "overall_accuracy": float(correct.sum() / max(len(y_true), 1)),
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


def average_precision(scores: np.ndarray, hits: np.ndarray, num_truths: int) -> float:
    """Area under the precision-recall curve (all-point interpolation, as PASCAL VOC 2010+ and COCO)."""
    if num_truths == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(hits[order])
    precision = true_pos / np.arange(1, len(order) + 1)
    recall = true_pos / num_truths
    # Make precision monotonically decreasing, then sum over the recall steps.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float((precision * recall_steps).sum())


def region_detection(
    pred_boxes: np.ndarray, pred_scores: np.ndarray, true_boxes: np.ndarray, true_valid: np.ndarray,
    region_names: Sequence[str],
) -> dict:
    """Mean IoU and AP@0.5 of the detector's one box per region against the pseudo-labels.

    Arrays are ``N x R x 4`` / ``N x R``. Only images with a pseudo-label for a region count
    for that region: where the annotator found no face there is no truth to compare with.
    A prediction is a hit when its IoU with the pseudo-label is at least 0.5.
    """
    per_region = {}
    for r, name in enumerate(region_names):
        keep = true_valid[:, r]
        iou = box_iou_pairs(pred_boxes[keep, r], true_boxes[keep, r])
        per_region[name] = {
            "n": int(keep.sum()),
            "mean_iou": float(iou.mean()) if keep.any() else 0.0,
            "ap50": average_precision(pred_scores[keep, r], (iou >= 0.5).astype(np.float64), int(keep.sum())),
        }
    counted = [v for v in per_region.values() if v["n"]]
    return {
        "mean_iou": float(np.mean([v["mean_iou"] for v in counted])) if counted else 0.0,
        "map50": float(np.mean([v["ap50"] for v in counted])) if counted else 0.0,
        "per_region": per_region,
    }


def format_table(metrics: dict) -> str:
    """The per-class table and the headline numbers, as printed by ``msfer evaluate``."""
    lines = [f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<10} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} "
                     f"{row['support']:>8d}")
    lines.append(f"n = {metrics['n']}   overall accuracy = {metrics['overall_accuracy']:.4f}   "
                 f"mean class accuracy = {metrics['mean_class_accuracy']:.4f}")
    if metrics.get("calibration"):
        cal = metrics["calibration"]
        floor = (f" (if calibrated: {cal['ece_floor']:.3f}, 95% up to {cal['ece_floor_95']:.3f})"
                 if "ece_floor_95" in cal else f" (if calibrated: {cal['ece_floor']:.3f})" if "ece_floor" in cal
                 else "")  # metrics saved before these keys
        lines.append(f"calibration: ECE = {cal['ece']:.3f}{floor}   NLL = {cal['nll']:.3f}   "
                     f"Brier = {cal['brier']:.3f}   mean top probability = {cal['mean_confidence']:.3f}")
    for rule, scores in metrics.get("decision_rules", {}).items():
        lines.append(f"decision {rule:<9} overall accuracy = {scores['overall_accuracy']:.4f}   "
                     f"mean class accuracy = {scores['mean_class_accuracy']:.4f}")
    if "region_detection" in metrics:
        det = metrics["region_detection"]
        lines.append(f"region detection vs pseudo-labels: mean IoU = {det['mean_iou']:.3f}   "
                     f"mAP@0.5 = {det['map50']:.3f}")
    return "\n".join(lines)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                          title: str = "") -> None:
    """Row-normalised confusion matrix (each row: where that true class went), with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "confusion matrix (row-normalised)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            axes.text(j, i, f"{rows[i, j]:.2f}\n{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                      color="white" if rows[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


# metrics.csv columns drawn by plot_learning_curves: (column, legend label), accuracies on the left panel.
CURVES = (("train_accuracy", "train (running, augmented)"),
          ("val_overall_accuracy", "validation overall"),
          ("val_mean_class_accuracy", "validation mean class"),
          ("photo_val_overall_accuracy", "photo validation overall"),
          ("photo_val_mean_class_accuracy", "photo validation mean class"))


def plot_learning_curves(rows: Sequence[dict], path: str | Path, title: str = "") -> None:
    """A run's learning curves from its ``metrics.csv`` rows (dicts of column -> number or string,
    as ``csv.DictReader`` or the trainer gives them; empty cells are skipped).

    Left: accuracies in % per epoch (training, validation overall and mean class, and the whole-
    pipeline photo validation when the run has one); right: training loss and learning rate.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def column(name: str) -> tuple[list[float], list[float]]:
        points = [(float(row["epoch"]), float(row[name])) for row in rows if row.get(name) not in (None, "")]
        return [x for x, _ in points], [y for _, y in points]

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, label in CURVES:
        epochs, values = column(name)
        if epochs:
            left.plot(epochs, [100 * v for v in values], marker="o", markersize=3, label=label,
                      linestyle=":" if name == "train_accuracy" else "-")
    left.set_xlabel("epoch")
    left.set_ylabel("accuracy (%)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    epochs, loss = column("train_loss")
    right.plot(epochs, loss, marker="o", markersize=3, color="tab:red", label="train loss")
    right.set_xlabel("epoch")
    right.set_ylabel("train loss")
    right.grid(alpha=0.3)
    epochs, lr = column("lr")
    if epochs:
        rate = right.twinx()
        rate.plot(epochs, lr, color="tab:grey", linestyle="--", marker="s", markersize=3,
                  label="learning rate (last step)")
        rate.set_ylabel("learning rate")
        rate.legend(fontsize=8, loc="upper center")
    right.legend(fontsize=8, loc="upper right")
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title or "learning curves")
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def write_report(metrics: dict, out_dir: str | Path, classes: Sequence[str], echo: bool = True) -> Path:
    """Write ``metrics.json`` and ``confusion_matrix.png`` into ``out_dir`` and print the table.

    Returns the JSON path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    write_text(path, json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.png")
    if echo:
        print(format_table(metrics))
    return path
