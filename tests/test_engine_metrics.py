import json

import numpy as np
import pytest

from msfer.engine.metrics import (
    average_precision,
    compute_metrics,
    plot_learning_curves,
    region_detection,
    write_report,
)
from msfer.labels import EMOTIONS


def test_metrics_against_a_hand_computed_confusion_matrix():
    # angry: 4 samples, 3 right; disgust: 1 sample, 0 right (called angry); fear: 0 samples (absent);
    # happy: 5 samples, all right. Other classes absent.
    y_true = [0, 0, 0, 0, 1, 3, 3, 3, 3, 3]
    y_pred = [0, 0, 0, 3, 0, 3, 3, 3, 3, 3]
    metrics = compute_metrics(y_true, y_pred, EMOTIONS)
    assert metrics["n"] == 10
    assert metrics["overall_accuracy"] == pytest.approx(8 / 10)
    # mean of recalls over the 3 present classes: (3/4 + 0 + 5/5) / 3, not over all 7
    assert metrics["mean_class_accuracy"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    matrix = np.zeros((7, 7), dtype=int)
    matrix[0, 0], matrix[0, 3], matrix[1, 0], matrix[3, 3] = 3, 1, 1, 5
    assert metrics["confusion_matrix"] == matrix.tolist()
    angry, happy = metrics["per_class"]["angry"], metrics["per_class"]["happy"]
    assert angry["precision"] == pytest.approx(3 / 4) and angry["recall"] == pytest.approx(3 / 4)
    assert happy["precision"] == pytest.approx(5 / 6) and happy["f1"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert metrics["per_class"]["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_average_precision_and_region_detection():
    # Ranked hits: hit, miss, hit of 2 truths -> precision envelope 1, 2/3 at recalls 0.5, 1.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([1.0, 0.0, 1.0]), 2)
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    truth = np.array([[[0, 0, 10, 10]], [[0, 0, 10, 10]], [[0, 0, 10, 10]]], dtype=float)
    pred = np.array([[[0, 0, 10, 10]], [[0, 0, 10, 5]], [[50, 50, 60, 60]]], dtype=float)
    valid = np.array([[True], [True], [False]])  # the third image has no pseudo-label: not counted
    result = region_detection(pred, np.array([[0.9], [0.8], [0.99]]), truth, valid, ["face"])
    assert result["per_region"]["face"]["n"] == 2
    assert result["mean_iou"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["map50"] == pytest.approx(1.0)


def test_write_report(tmp_path, capsys):
    metrics = compute_metrics([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 5], EMOTIONS)
    write_report(metrics, tmp_path, EMOTIONS)
    assert json.loads((tmp_path / "metrics.json").read_text())["overall_accuracy"] == pytest.approx(6 / 7)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert "mean class accuracy" in capsys.readouterr().out


def test_learning_curves_are_drawn_from_metrics_csv_rows(tmp_path):
    """Rows as csv.DictReader gives them (strings; a photo column empty in some epochs) draw a PNG."""
    from PIL import Image

    rows = [{"epoch": str(e), "train_loss": str(1.0 / e), "train_accuracy": str(0.4 + e / 100),
             "val_overall_accuracy": str(0.5 + e / 100), "val_mean_class_accuracy": str(0.45 + e / 100),
             "lr": str(1e-3 / e), "photo_val_overall_accuracy": "" if e % 2 else str(0.6),
             "photo_val_mean_class_accuracy": "" if e % 2 else str(0.55)} for e in range(1, 6)]
    path = tmp_path / "curves.png"
    plot_learning_curves(rows, path, "run")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height > 200
    plot_learning_curves(rows[:1], tmp_path / "one.png")  # a run's first epoch, no photo validation yet
    assert (tmp_path / "one.png").stat().st_size > 0
