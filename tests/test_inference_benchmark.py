"""`msfer benchmark`: a suite of labelled sets scored per set and model, with bootstrap intervals and a suite score
that counts each domain once."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from msfer.cli import main
from msfer.engine.metrics import compute_metrics
from msfer.errors import MsferError
from msfer.inference.benchmark import (
    ModelVariant,
    accuracy_replicates,
    bootstrap_indices,
    format_markdown,
    load_suite,
    run_benchmark,
)
from msfer.inference.recognizer import EmotionRecognizer
from msfer.labels import EMOTIONS


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory, astronaut) -> Path:
    """Two crop sets (one domain) and one photo set (another): the astronaut's face as crops of two classes, and
    whole photos of it plus a blank one, where no face is found."""
    root = tmp_path_factory.mktemp("suite")
    face = astronaut[20:220, 140:320]
    for set_name, shift in (("crops_a", 0), ("crops_b", 6)):
        for label in ("happy", "sad"):
            folder = root / set_name / "val" / label
            folder.mkdir(parents=True)
            for k in range(3):
                Image.fromarray(np.roll(face, shift + 3 * k, axis=1)).save(folder / f"{label}{k}.png")
    photos = root / "photos" / "val"
    (photos / "happy").mkdir(parents=True)
    (photos / "sad").mkdir(parents=True)
    Image.fromarray(astronaut).save(photos / "happy" / "a.jpg", quality=95)
    Image.fromarray(astronaut[:, ::-1].copy()).save(photos / "sad" / "b.jpg", quality=95)
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(photos / "sad" / "blank.jpg")
    suite = {"name": "tiny", "description": "made by the test", "sets": [
        {"name": "crops_a", "domain": "crops", "format": "folder", "root": "crops_a", "split": "val", "mode": "crops"},
        {"name": "crops_b", "domain": "crops", "format": "folder", "root": "crops_b", "split": "val", "mode": "crops"},
        {"name": "photos", "domain": "photos", "format": "folder", "root": "photos", "split": "val",
         "mode": "photos", "groups": "^(a|b)"},
        {"name": "aside", "domain": None, "format": "folder", "root": "crops_a", "split": "val", "mode": "crops"},
    ]}
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture(scope="module")
def result(suite_file, random_weights, classifier_weights) -> dict:
    models = [ModelVariant("region", EmotionRecognizer(random_weights)),
              ModelVariant("plain", EmotionRecognizer(classifier_weights))]
    return run_benchmark(load_suite(suite_file), models, progress=False)


def test_rows_hold_each_set_and_model_with_intervals_around_the_figure(result):
    rows = {(row["set"], row["model"]): row for row in result["rows"]}
    assert set(rows) == {(s, m) for s in ("crops_a", "crops_b", "photos", "aside") for m in ("region", "plain")}
    for row in rows.values():
        low, high = row["overall_accuracy_ci"]
        assert low <= row["overall_accuracy"] <= high
        low, high = row["mean_class_accuracy_ci"]
        assert low <= row["mean_class_accuracy"] <= high
        assert row["decision"] == "argmax" and len(row["confusion_matrix"]) == len(EMOTIONS)
        assert row["ece"] is not None and row["nll"] > 0
    assert rows[("crops_a", "plain")]["n"] == 6 and rows[("crops_a", "plain")]["missed"] == 0
    photos = rows[("photos", "plain")]
    assert photos["n"] == 3 and photos["missed"] == 1  # the blank photo: no face, counted as wrong
    assert photos["overall_accuracy"] <= 2 / 3
    assert sum(map(sum, photos["confusion_matrix"])) == 3 and sum(r[-1] for r in photos["confusion_matrix"]) == 1


def test_groups_split_a_sets_accuracy_by_the_file_name(result):
    for row in result["rows"]:
        if row["set"] != "photos":
            assert "groups" not in row
            continue
        groups = row["groups"]
        assert {name: g["n"] for name, g in groups.items()} == {"a": 1, "b": 2}  # blank.jpg starts with b
        assert groups["a"]["overall_accuracy"] * 1 + groups["b"]["overall_accuracy"] * 2 == pytest.approx(
            row["overall_accuracy"] * 3)
    assert "| photos | b | 2 |" in format_markdown(result)


def test_the_score_counts_each_domain_once_and_leaves_out_sets_without_one(result):
    rows = {(row["set"], row["model"]): row["overall_accuracy"] for row in result["rows"]}
    assert result["suite"]["domains"] == ["crops", "photos"]
    for score in result["scores"]:
        model = score["model"]
        crops = (rows[("crops_a", model)] + rows[("crops_b", model)]) / 2
        assert score["score_overall"] == pytest.approx((crops + rows[("photos", model)]) / 2)
    region, plain = result["scores"]
    assert "difference_overall" not in region  # the reference
    assert plain["difference_overall"] == pytest.approx(plain["score_overall"] - region["score_overall"])
    low, high = plain["difference_overall_ci"]
    assert low <= plain["difference_overall"] <= high


def test_a_model_against_itself_differs_by_exactly_zero(suite_file, random_weights):
    recognizer = EmotionRecognizer(random_weights)
    same = run_benchmark(load_suite(suite_file), [ModelVariant("a", recognizer), ModelVariant("b", recognizer)],
                         progress=False)
    assert same["scores"][1]["difference_overall"] == 0 and same["scores"][1]["difference_overall_ci"] == [0, 0]


def test_bootstrap_replicates_agree_with_the_metrics_of_each_resample():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, len(EMOTIONS), 50)
    predicted = np.where(rng.random(50) < 0.6, labels, rng.integers(0, len(EMOTIONS), 50))
    indices = bootstrap_indices(50, resamples=20, seed=3)
    overall, mean_class = accuracy_replicates(predicted == labels, labels, indices)
    for b in range(20):
        expected = compute_metrics(labels[indices[b]], predicted[indices[b]], EMOTIONS)
        assert overall[b] == pytest.approx(expected["overall_accuracy"])
        assert mean_class[b] == pytest.approx(expected["mean_class_accuracy"])
    assert (bootstrap_indices(50, 20, seed=3) == indices).all()  # the same resamples for every model


@pytest.mark.parametrize("change, message", [
    ({"mode": "whole"}, "mode 'whole'"),
    ({"format": "nope"}, "unknown format 'nope'"),
    ({"colour": 1}, "unknown keys colour"),
    ({"groups": "[0-9]+"}, "groups '\\[0-9\\]\\+' is not a usable regular expression: it has no group"),
    ({"root": None}, None),
])
def test_a_bad_suite_is_an_error_naming_the_file_and_set(tmp_path, change, message):
    entry = {"name": "x", "format": "folder", "root": "x", "mode": "crops", **change}
    if entry["root"] is None:
        del entry["root"]
        message = "missing keys root"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sets": [entry]}))
    with pytest.raises(MsferError, match=f"bad.yaml, set 1: .*{message}"):
        load_suite(path)


def test_duplicate_names_and_empty_suites_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    entry = {"name": "x", "format": "folder", "root": "x", "mode": "crops"}
    path.write_text(yaml.safe_dump({"sets": [entry, entry]}))
    with pytest.raises(MsferError, match="a second set named 'x'"):
        load_suite(path)
    path.write_text("name: empty\n")
    with pytest.raises(MsferError, match="dup.yaml: a suite needs 'sets:'"):
        load_suite(path)


def test_relative_roots_follow_data_root(tmp_path, suite_file):
    assert load_suite(suite_file).sets[0].root == suite_file.parent / "crops_a"
    assert load_suite(suite_file, tmp_path).sets[0].root == tmp_path / "crops_a"


def test_the_command_scores_two_rules_and_writes_its_files_once(suite_file, random_weights, tmp_path, capsys):
    from msfer.engine.calibration import calibrated_checkpoint
    from msfer.engine.checkpoint import load_checkpoint, save_checkpoint

    offsets = [0.5, -0.5, 0.2, 0.0, -0.1, 0.3, -0.4]
    balanced = save_checkpoint(calibrated_checkpoint(load_checkpoint(random_weights), [1.0] * 7, [0.0] * 7, offsets,
                                                     {"method": "temperature", "balanced_tau": 1.0}),
                               tmp_path / "balanced.pt")
    out = tmp_path / "bench"
    args = ["benchmark", str(suite_file), "--weights", f"mine={balanced}", "--decision", "argmax", "balanced",
            "--crop-rule", "own", "similarity", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "benchmark.json").read_text())
    names = [model["name"] for model in report["models"]]
    assert names == ["mine own argmax", "mine own balanced", "mine similarity argmax", "mine similarity balanced"]
    assert "| crops_a | crops | mine own balanced | 6 |" in printed
    assert (out / "benchmark.md").read_text() == format_markdown(report)
    stored = np.load(out / "predictions.npz")
    assert stored["photos/probs/mine own"].shape == (3, len(EMOTIONS))
    assert np.isnan(stored["photos/probs/mine own"]).any(axis=1).sum() == 1
    # a crop is classified whole: the crop rule changes photos only
    assert np.array_equal(stored["crops_a/probs/mine own"], stored["crops_a/probs/mine similarity"])
    assert main(args) == 2 and "add --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_a_rule_the_model_lacks_is_refused_before_scoring(suite_file, random_weights, capsys):
    assert main(["benchmark", str(suite_file), "--weights", str(random_weights), "--decision", "balanced"]) == 2
    assert "has no balanced decision rule" in capsys.readouterr().err
