"""Training targets that mix a sample's label with its soft label (FER+ votes on FER2013 images)."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from msfer.cli import main as cli
from msfer.data.samples import Sample
from msfer.engine.config import load_config
from msfer.engine.datasets import ConcatFaceDataset, FaceDataset
from msfer.errors import MsferError
from msfer.labels import EMOTIONS

TINY = ["model.name=classifier_mobilenetv2", "model.pretrained=false", "model.input_size=32", "data.num_workers=0",
        "train.batch_size=8", "eval.batch_size=16", "train.epochs=1", "data.format=fer2013"]
HAPPY, SAD = EMOTIONS.index("happy"), EMOTIONS.index("sad")


def test_the_target_is_the_weighted_mix_and_the_label_alone_without_a_soft_label():
    votes = tuple(float(i == SAD) for i in range(len(EMOTIONS)))  # the annotators say sad
    samples = [Sample("a", HAPPY, "train", pixels=np.zeros((8, 8), np.uint8), soft_label=votes),
               Sample("b", HAPPY, "train", pixels=np.zeros((8, 8), np.uint8))]
    mixed = FaceDataset(samples, 8, ("face",), soft_label_weight=0.25)
    target = mixed[0]["soft_label"]
    assert target.dtype == torch.float32 and target.sum().item() == pytest.approx(1.0)
    assert target[HAPPY].item() == pytest.approx(0.75) and target[SAD].item() == pytest.approx(0.25)
    assert mixed[1]["soft_label"].tolist() == [float(i == HAPPY) for i in range(len(EMOTIONS))]
    assert "soft_label" not in FaceDataset(samples, 8, ("face",))[0]  # weight 0: the label, as a class index
    # every part of a training set gives the same keys, so their samples share a batch
    extra = FaceDataset(samples[1:], 8, ("face",), soft_label_weight=0.25)
    assert set(ConcatFaceDataset([mixed, extra], [0.5, 0.5])[1]) == set(mixed[0])


def test_old_configs_with_the_soft_labels_flag_still_load(tmp_path):
    assert load_config(base={"data": {"soft_labels": True}})["data"]["soft_label_weight"] == 1.0
    config = load_config(base={"data": {"soft_labels": False}})
    assert config["data"]["soft_label_weight"] == 0.0 and "soft_labels" not in config["data"]
    assert load_config(overrides=["data.soft_labels=true"])["data"]["soft_label_weight"] == 1.0
    with pytest.raises(MsferError, match="data.soft_label_weight"):
        load_config(overrides=["data.soft_label_weight=1.5"])


@pytest.fixture(scope="module")
def fer_with_votes(tmp_path_factory) -> tuple[Path, Path]:
    """A FER2013 CSV (each class 3 train + 2 public_test rows, a bright patch per class) and a FER+ folder
    whose votes name, for every train row, the next class over from its FER2013 label."""
    root = tmp_path_factory.mktemp("fer")
    rng = np.random.default_rng(0)
    rows, votes = [], []
    fer_codes = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    ferplus_columns = ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear")
    for usage, per_class in (("Training", 3), ("PublicTest", 2)):
        for code in range(len(fer_codes)):
            for _ in range(per_class):
                pixels = rng.integers(0, 60, (48, 48), dtype=np.uint8)
                pixels[6 * code : 6 * code + 8, 10:30] = 230
                if usage == "Training":
                    other = ferplus_columns.index(fer_codes[(code + 1) % 7])
                    votes.append((len(rows), [10 * (i == other) for i in range(10)]))
                rows.append([str(code), " ".join(map(str, pixels.ravel())), usage])
    with (root / "fer2013.csv").open("w", newline="") as file:
        csv.writer(file).writerows([["emotion", "pixels", "Usage"], *rows])
    (root / "ferplus" / "FER2013Train").mkdir(parents=True)
    with (root / "ferplus" / "FER2013Train" / "label.csv").open("w", newline="") as file:
        for row, counts in votes:
            csv.writer(file).writerow([f"fer{row:07d}.png", "(0, 0, 48, 48)", *counts])
    return root / "fer2013.csv", root / "ferplus"


def train_loss(run: Path, *overrides: str) -> float:
    assert cli(["train", "--config", os.devnull, "--output-dir", str(run), *TINY, *overrides]) == 0
    with open(run / "metrics.csv") as handle:
        return float(next(csv.DictReader(handle))["train_loss"])


def test_training_on_fer2013_labels_mixed_with_ferplus_votes_beside_an_extra_set(fer_with_votes, tmp_path):
    csv_file, ferplus = fer_with_votes
    extra = tmp_path / "extra"  # no soft labels: its faces train on their labels
    for name in EMOTIONS:
        (extra / "train" / name).mkdir(parents=True)
        Image.new("L", (48, 48), 100 + EMOTIONS.index(name)).save(extra / "train" / name / "0.png")
    common = [f"data.root={csv_file}", f"data.reader_options={{ferplus: {ferplus}}}",
              f"data.extra_train=[{{format: folder, root: {extra}, split: train, weight: 0.3}}]"]
    labels_only = train_loss(tmp_path / "labels", *common, "data.soft_label_weight=0")
    mixed = train_loss(tmp_path / "mixed", *common, "data.soft_label_weight=0.5")
    # the same seed and images: only the targets differ, and half of each FER2013 target is a class its label is not
    assert np.isfinite(mixed) and mixed != pytest.approx(labels_only, abs=1e-4)
    saved = yaml.safe_load((tmp_path / "mixed" / "config.yaml").read_text())
    assert saved["data"]["soft_label_weight"] == 0.5 and "soft_labels" not in saved["data"]


def test_a_soft_label_weight_without_soft_labels_names_the_way_to_get_them(fer_with_votes, tmp_path, capsys):
    csv_file, _ = fer_with_votes
    assert cli(["train", "--config", os.devnull, "--output-dir", str(tmp_path / "run"), *TINY,
                f"data.root={csv_file}", "data.soft_label_weight=0.5"]) != 0
    error = capsys.readouterr().err
    assert "no training sample" in error and "data.reader_options={ferplus: FOLDER}" in error and str(csv_file) in error


@pytest.fixture(scope="module")
def teacher_setup(fer_with_votes, tmp_path_factory):
    """A training config of the FER2013 CSV beside a folder set, and two random classifiers as teachers."""
    from msfer.model.checkpoint import random_checkpoint

    csv_file, _ = fer_with_votes
    folder = tmp_path_factory.mktemp("teacher")
    extra = folder / "extra"
    for name in EMOTIONS:
        (extra / "train" / name).mkdir(parents=True)
        Image.new("L", (40, 40), 90 + 9 * EMOTIONS.index(name)).save(extra / "train" / name / "0.png")
    common = [f"data.root={csv_file}", f"data.extra_train=[{{format: folder, root: {extra}, split: train, "
                                       "weight: 0.3}]", "data.image_size=24"]
    teachers = [random_checkpoint(folder / f"teacher{seed}.pt", "classifier_mobilenetv2", seed=seed)
                for seed in (0, 1)]
    return common, teachers


def test_a_teachers_soft_labels_are_the_mean_of_its_models_on_every_training_image(teacher_setup, tmp_path):
    from msfer.data.readers import read_dataset
    from msfer.engine.teacher import load_soft_labels, save_soft_labels, teacher_soft_labels
    from msfer.inference.recognizer import EmotionRecognizer

    common, teachers = teacher_setup
    config = load_config(None, [*TINY, *common])
    keys, probs = teacher_soft_labels(config, teachers, progress=False)
    assert len(keys) == len(set(keys)) == 7 * 3 + 7  # FER2013's training rows and the folder set's images
    assert keys[0].startswith("fer2013.csv/") and keys[-1].startswith("extra/train/")
    alone = [teacher_soft_labels(config, [teacher], progress=False) for teacher in teachers]
    assert all(these == keys for these, _ in alone)
    assert not np.allclose(alone[0][1], alone[1][1], atol=1e-3)  # two different teachers
    assert np.allclose(probs, (alone[0][1] + alone[1][1]) / 2, atol=1e-6)
    # each teacher sees the image as inference would show it the crop: at its own input size (not the config's
    # data.image_size of 24 px), resized once
    csv_file = config["data"]["root"]
    first = next(s for s in read_dataset(csv_file, "fer2013").samples if s.split == "train")
    [face] = EmotionRecognizer(teachers[0], device="cpu").classify_faces([first.load()])
    assert keys[0] == f"fer2013.csv/{first.id}"
    assert np.allclose([face.probs[name] for name in EMOTIONS], alone[0][1][0], atol=1e-4)

    # and the folder set's images under their own keys
    extra = Path(config["data"]["extra_train"][0]["root"])
    [neutral] = EmotionRecognizer(teachers[0], device="cpu").classify_faces([Image.open(extra / "train" / "neutral" /
                                                                                     "0.png")])
    row = keys.index("extra/train/neutral/0.png")
    assert np.allclose([neutral.probs[name] for name in EMOTIONS], alone[0][1][row], atol=1e-4)

    path = save_soft_labels(tmp_path / "teacher.npz", keys, probs)
    loaded = load_soft_labels(path)
    assert list(loaded) == keys and np.allclose([loaded[key] for key in keys], probs)

    from msfer.model.checkpoint import random_checkpoint

    region_network = random_checkpoint(tmp_path / "regions.pt", "msfer_mobilenetv2", seed=0)
    with pytest.raises(MsferError, match="regions.pt is a region network: teachers are plain classifiers"):
        teacher_soft_labels(config, [region_network], progress=False)


def test_a_student_trains_on_the_teachers_soft_labels(teacher_setup, tmp_path, capsys, caplog):
    import logging

    from msfer.engine.teacher import save_soft_labels, teacher_soft_labels

    caplog.set_level(logging.INFO, logger="msfer.engine.datasets")

    common, teachers = teacher_setup
    keys, probs = teacher_soft_labels(load_config(None, [*TINY, *common]), teachers, progress=False)
    path = save_soft_labels(tmp_path / "teacher.npz", keys, probs)
    labels_only = train_loss(tmp_path / "labels", *common)
    distilled = train_loss(tmp_path / "distilled", *common, f"data.soft_label_file={path}",
                           "data.soft_label_weight=0.5")
    # the same seed and images: only the targets differ
    assert np.isfinite(distilled) and distilled != pytest.approx(labels_only, abs=1e-4)
    assert "a teacher's soft label for 28 of the 28 training images" in caplog.text
    assert "names none of" not in caplog.text

    # a file made before the folder set joined: that set trains on its labels, and the warning names it
    crops_only = [i for i, key in enumerate(keys) if key.startswith("fer2013.csv/")]
    partial = save_soft_labels(tmp_path / "partial.npz", [keys[i] for i in crops_only], probs[crops_only])
    assert np.isfinite(train_loss(tmp_path / "partial", *common, f"data.soft_label_file={partial}",
                                  "data.soft_label_weight=0.5"))
    assert "a teacher's soft label for 21 of the 28 training images" in caplog.text
    assert "names none of the 7 images of data.extra_train[0]: they train on their labels only" in caplog.text

    other = save_soft_labels(tmp_path / "other.npz", [f"elsewhere/{key}" for key in keys], probs)
    assert cli(["train", "--config", os.devnull, "--output-dir", str(tmp_path / "refused"), *TINY, *common,
                f"data.soft_label_file={other}", "data.soft_label_weight=0.5"]) != 0
    assert "names none of the 28 training images" in capsys.readouterr().err


def test_a_soft_label_file_that_is_not_one_is_refused_naming_it(tmp_path):
    from msfer.engine.teacher import load_soft_labels, save_soft_labels

    with pytest.raises(MsferError, match="cannot read the soft labels .*missing.npz"):
        load_soft_labels(tmp_path / "missing.npz")
    np.savez(tmp_path / "classes.npz", keys=np.array(["a/b"]), probs=np.full((1, 7), 1 / 7, np.float32),
             classes=np.array(list(reversed(EMOTIONS))))
    with pytest.raises(MsferError, match="classes.npz are of the classes"):
        load_soft_labels(tmp_path / "classes.npz")
    np.savez(tmp_path / "sums.npz", keys=np.array(["a/b"]), probs=np.full((1, 7), 0.5, np.float32),
             classes=np.array(EMOTIONS))
    with pytest.raises(MsferError, match="sums.npz are not 1 x 7 probabilities summing to 1"):
        load_soft_labels(tmp_path / "sums.npz")
    (tmp_path / "empty.npz").touch()
    with pytest.raises(MsferError, match="cannot read the soft labels .*empty.npz"):
        load_soft_labels(tmp_path / "empty.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(MsferError, match="cannot read the soft labels .*array.npy: not an .npz file"):
        load_soft_labels(tmp_path / "array.npy")
    with pytest.raises(MsferError, match="same soft-label key"):
        save_soft_labels(tmp_path / "twice.npz", ["a/b", "a/b"], np.full((2, 7), 1 / 7))
    assert not (tmp_path / "twice.npz").exists()
