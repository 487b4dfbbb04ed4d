"""Training on whole photos: cropped by the crop rule from their annotations, drawn with other sets by
stated shares, never overlapping a validation set, and scored through the whole pipeline (data.photo_val)."""
import argparse
import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfer.cli import main as cli
from msfer.data.samples import Sample
from msfer.engine.datasets import FaceDataset
from msfer.engine.distributed import DistInfo, EpochSampler
from msfer.faces.crop import CropRule
from msfer.labels import EMOTIONS

TINY = ["model.name=classifier_mobilenetv2", "model.pretrained=false", "model.input_size=32",
        "data.format=folder", "data.val_split=val", "data.num_workers=0", "train.batch_size=8", "eval.batch_size=16"]
REGIONS = ("face", "left_eye", "right_eye", "nose", "mouth")
RED = (255, 0, 0)


def face_record(sample_id: str, label: int, width: int, height: int, face, status: str = "ok") -> dict:
    """An annotation record as `msfer annotate` writes it, for a face box ``face`` (original pixels)."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    landmarks = [[x1 + 0.3 * w, y1 + 0.4 * h], [x1 + 0.7 * w, y1 + 0.4 * h], [x1 + 0.5 * w, y1 + 0.6 * h],
                 [x1 + 0.35 * w, y1 + 0.8 * h], [x1 + 0.65 * w, y1 + 0.8 * h]]
    regions = {"face": list(face), "left_eye": [x1 + 0.2 * w, y1 + 0.3 * h, x1 + 0.4 * w, y1 + 0.5 * h],
               "right_eye": [x1 + 0.6 * w, y1 + 0.3 * h, x1 + 0.8 * w, y1 + 0.5 * h],
               "nose": [x1 + 0.4 * w, y1 + 0.5 * h, x1 + 0.6 * w, y1 + 0.7 * h],
               "mouth": [x1 + 0.3 * w, y1 + 0.72 * h, x1 + 0.7 * w, y1 + 0.88 * h]}
    return {"id": sample_id, "split": sample_id.split("/")[0], "label": label, "width": width, "height": height,
            "status": status, "regions": regions if status == "ok" else {},
            "landmarks": landmarks if status == "ok" else None, "score": 0.99 if status == "ok" else None}


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory) -> Path:
    """``crops/``: 7 classes x 4 face crops per split (24 px grey); ``photos/train``: 7 x 2 colour photos (64 x 48)
    whose face is a box in a corner, with annotations (one photo unannotated, one without a face);
    ``faces/val``: the astronaut and a photo without a face, for the whole-pipeline validation."""
    root = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, name in enumerate(EMOTIONS):
            folder = root / "crops" / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 60, (24, 24), dtype=np.uint8)
                pixels[3 + (k // 4) * 9 : 9 + (k // 4) * 9, 2 + (k % 4) * 5 : 7 + (k % 4) * 5] = 230
                Image.fromarray(pixels).save(folder / f"{i}.png")
    records = []
    for k, name in enumerate(EMOTIONS):
        folder = root / "photos" / "train" / name
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
            pixels[10:40, 30:60] = 120 + 15 * k  # the "face", its brightness by class
            Image.fromarray(pixels).save(folder / f"{i}.png")
            sample_id = f"train/{name}/{i}.png"
            if (k, i) == (0, 1):
                continue  # never annotated
            status = "no_face" if (k, i) == (1, 1) else "ok"
            records.append(face_record(sample_id, k, 64, 48, (30, 10, 60, 40), status))
    (root / "photos" / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    from skimage.data import astronaut, coffee

    for name, pixels in (("happy", astronaut()), ("sad", coffee())):
        folder = root / "faces" / "val" / name
        folder.mkdir(parents=True)
        Image.fromarray(pixels).resize((256, 256 * pixels.shape[0] // pixels.shape[1])).save(folder / "0.png")
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_a_photo_sets_boxes_land_on_the_right_crop_pixels(tmp_path, caplog):
    # A photo with the face off-centre and its mouth box painted red: in the crop, the mapped mouth box
    # must be where the red pixels are, for each crop method.
    pixels = np.full((120, 160, 3), 70, np.uint8)
    record = face_record("all/happy/a.png", 3, 160, 120, (90, 30, 150, 100))
    x1, y1, x2, y2 = (int(round(v)) for v in record["regions"]["mouth"])
    pixels[y1:y2, x1:x2] = RED
    Image.fromarray(pixels).save(tmp_path / "a.png")
    samples = [Sample("all/happy/a.png", 3, "all", path=tmp_path / "a.png"),
               Sample("all/sad/b.png", 4, "all", path=tmp_path / "a.png"),
               Sample("all/fear/c.png", 2, "all", path=tmp_path / "a.png")]
    annotations = {"all/happy/a.png": record,
                   "all/sad/b.png": face_record("all/sad/b.png", 4, 160, 120, (0, 0, 1, 1), "rejected:roll")}
    for method, scale in (("box", 1.0), ("box", 1.4), ("roll", 1.2), ("similarity", 1.0)):
        with caplog.at_level(logging.WARNING):
            dataset = FaceDataset(samples, 64, REGIONS, annotations, crop_rule=CropRule(method, scale), name="photos")
        # the photos without a usable face are left out, counted and logged
        assert len(dataset) == 1 and dataset.left_out == {"rejected:roll": 1, "no record": 1}
        assert "2 of 3 photos have no usable face annotation" in caplog.text
        item = dataset[0]
        image = item["image"].numpy().transpose(1, 2, 0).astype(int)
        assert image.shape == (64, 64, 3) and item["box_valid"].all()
        red = np.all(np.abs(image - RED) < 60, axis=2)
        ys, xs = np.nonzero(red)
        box = item["boxes"][REGIONS.index("mouth")].numpy()
        assert red.sum() > 20
        if method == "box":  # not turned: the box is exactly the red area
            assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.0), (method, scale)
        else:  # turned: the axis-aligned box around the turned area holds it
            assert (xs.min() >= box[0] - 1 and ys.min() >= box[1] - 1 and xs.max() + 1 <= box[2] + 1
                    and ys.max() + 1 <= box[3] + 1), method
    assert dataset.decode(0)[0].shape == (3, 64, 64)


def test_weighted_sets_get_their_stated_shares_each_epoch_and_the_same_order_again():
    groups = [(100, 0.8), (10, 0.2)]  # 100 crops and 10 photos, the photos a fifth of each epoch
    sampler = EpochSampler(110, seed=3, groups=groups)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = np.array(list(sampler))
        assert len(order) == 110 and (order < 100).sum() == 88 and (order >= 100).sum() == 22
        counts = np.bincount(order[order >= 100] - 100, minlength=10)
        assert counts.min() >= 2 and counts.max() <= 3  # whole passes over the small set, then part of one
        assert len(set(order[order < 100])) == 88  # a random part of the large one, no repeats
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    resumed = EpochSampler(110, seed=3, groups=groups)  # a resumed run builds a fresh sampler
    resumed.set_epoch(2)
    assert np.array_equal(list(resumed), orders[2])
    # class-balanced within each set: still the stated shares
    weights = np.r_[np.full(100, 0.01), np.linspace(1, 2, 10)]
    assert (np.array(list(EpochSampler(110, 3, weights=weights, groups=groups))) >= 100).sum() == 22
    # two ranks split one epoch's draws between them
    halves = [list(EpochSampler(110, 3, DistInfo(rank, 2), groups=groups)) for rank in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(orders[0].tolist())


def test_training_sets_never_overlap_a_validation_set(tiny_sets, tmp_path, capsys):
    common = ["--config", os.devnull, *TINY, f"data.root={tiny_sets / 'crops'}", "train.epochs=1"]
    extra = (f"data.extra_train=[{{format: folder, root: {tiny_sets / 'crops'}, split: val, weight: 0.3}}]")
    assert cli(["train", "--output-dir", str(tmp_path / "a"), *common, extra]) == 2
    error = capsys.readouterr().err
    assert "28 training images of data.extra_train[0]" in error and "also validation images of data.val_split" in error
    photo_val = f"data.photo_val={{format: folder, root: {tiny_sets / 'crops'}, split: train}}"
    assert cli(["train", "--output-dir", str(tmp_path / "b"), *common, photo_val]) == 2
    assert "validation images of data.photo_val" in capsys.readouterr().err
    assert cli(["train", "--output-dir", str(tmp_path / "c"), *common,
                "data.extra_train=[{format: folder, root: x, split: train, weight: 0.6}, "
                "{format: folder, root: y, split: train, weight: 0.4}]"]) == 2
    assert "weights sum to 1" in capsys.readouterr().err
    assert not (tmp_path / "a" / "last.pt").exists()


def run_training(*args: str) -> dict:
    """``msfer train`` in process, returning its summary."""
    from msfer.cli import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.train_or_test(parser.parse_args(list(args)))


def test_crops_plus_weighted_photos_with_photo_validation_resume_exactly(tiny_sets, tmp_path):
    common = ["--config", os.devnull, *TINY, f"data.root={tiny_sets / 'crops'}", "train.epochs=2",
              "data.crop_rule={method: similarity, scale: 1.2}",
              f"data.extra_train=[{{format: folder, root: {tiny_sets / 'photos'}, split: train, weight: 0.25, "
              f"crop: true, annotations: {tiny_sets / 'photos' / 'regions.jsonl'}}}]",
              f"data.photo_val={{format: folder, root: {tiny_sets / 'faces'}, split: val}}"]
    whole = run_training("--output-dir", str(tmp_path / "whole"), *common)
    # the summary and metrics.csv carry the photo validation (after the last epoch only, by default)
    photo = whole["photo_validation"]
    assert photo["epoch"] == 2 and photo["n"] == 2 and photo["faces_missed"] == 1
    assert photo["overall_accuracy"] in (0.0, 0.5) and 0 <= photo["mean_class_accuracy"] <= 0.5
    rows = read_csv(tmp_path / "whole" / "metrics.csv")
    assert [row["photo_val_overall_accuracy"] for row in rows] == ["", str(photo["overall_accuracy"])]
    assert rows[1]["photo_val_faces_missed"] == "1" and rows[1]["photo_val_mean_class_accuracy"] != ""
    last = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert last["crop_rule"] == {"method": "similarity", "scale": 1.2}
    assert last["photo_val"]["detection"]["missed_ids"] == ["val/sad/0.png"]
    assert cli(["train", "--resume", str(tmp_path / "whole"), "--test-only"]) == 0  # scores photo_val too
    tested = json.loads((tmp_path / "whole" / "eval_photo_val" / "metrics.json").read_text())
    assert tested["n"] == 2 and tested["detection"]["faces_missed"] == 1

    # stopped after epoch 1 by the time budget, then resumed, with photo_val scored every epoch
    split = tmp_path / "split"
    assert run_training("--output-dir", str(split), *common, "eval.photo_val_every=1",
                        "train.max_minutes=1e-9")["photo_validation"]["epoch"] == 1
    assert run_training("--resume", str(split), "train.max_minutes=null")["photo_validation"] == photo
    resumed = read_csv(split / "metrics.csv")
    assert resumed[0]["photo_val_overall_accuracy"] != ""
    for key in ("train_loss", "train_accuracy", "val_overall_accuracy", "lr", "photo_val_overall_accuracy",
                "photo_val_mean_class_accuracy"):
        assert float(resumed[1][key]) == pytest.approx(float(rows[1][key]), rel=1e-6, abs=1e-9), key


def test_a_region_mostly_outside_the_crop_is_no_target():
    # The mouth (rows 50-70 of the photo) in a 60 px crop shifted down by ty: valid while at least half
    # of it is in view, as the augmentation's min_box_visible rule has it; a clipped sliver is no target.
    from msfer.engine.datasets import region_boxes

    record = {"status": "ok", "width": 100, "height": 100,
              "regions": {"face": [0, 0, 100, 100], "mouth": [20, 50, 50, 70]}}
    for ty, in_view, expected in ((-30, 1.0, True), (-5, 0.75, True), (0, 0.5, True), (5, 0.25, False)):
        transform = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, ty]])
        boxes, valid = region_boxes(record, ["mouth"], 60, transform)
        assert (boxes[0, 3] - boxes[0, 1]) / 20 == pytest.approx(in_view)
        assert valid[0] == expected, (ty, boxes)


def test_balanced_class_weights_follow_the_sets_shares_not_their_sizes():
    # A big set of one class and a small set of another at share 0.5: an epoch draws both classes equally,
    # so balanced class weights must be equal, although the sizes are 90 to 10.
    from msfer.engine.datasets import ConcatFaceDataset

    def images(label: int, n: int) -> FaceDataset:
        return FaceDataset([Sample(f"{label}/{i}", label, "train", pixels=np.zeros((8, 8), np.uint8))
                            for i in range(n)], 8, REGIONS)

    both = ConcatFaceDataset([images(3, 90), images(4, 10)], [0.5, 0.5])
    drawn = both.drawn_class_frequencies(len(EMOTIONS))
    assert drawn.sum() == pytest.approx(1.0)
    assert drawn[3] == pytest.approx(0.5) and drawn[4] == pytest.approx(0.5)
    lopsided = ConcatFaceDataset([images(3, 90), images(4, 10)], [0.9, 0.1])
    assert lopsided.drawn_class_frequencies(len(EMOTIONS))[4] == pytest.approx(0.1)


def test_a_face_past_the_photos_edge_is_cropped_for_training_as_inference_crops_it(astronaut, random_weights,
                                                                                    recognizer, tmp_path, caplog):
    # The astronaut's photo cut through her face at the top and left: the detector's box reaches past the
    # edges. Training crops it from its `msfer annotate` record, inference and the photo validation from the
    # detection itself; the same rule must give the same pixels, the part outside the photo padded alike.
    from msfer import EmotionRecognizer
    from msfer.engine.photos import largest_face_crops
    from msfer.faces.detection import detect_faces
    from msfer.faces.retinaface import Face
    from msfer.regions.annotator import Annotator

    photo = np.ascontiguousarray(astronaut[100:350, 205:415])
    found = detect_faces(recognizer.detector, [photo])[0][0]
    assert found.box[0] < -3 and found.box[1] < -3, found.box  # past the left and top edges
    # on quarter pixels, which the record's two decimals hold exactly
    face = Face(np.round(found.box * 4) / 4, found.score, np.round(found.landmarks * 4) / 4)
    height, width = photo.shape[:2]
    record = {"id": "all/happy/cut.png", "split": "all", "label": 3,
              **Annotator(recognizer.detector)._describe([face], 1.0, width, height)}
    assert record["status"] == "ok" and record["regions"]["face"][:2] == [0.0, 0.0]  # the region target is clipped
    assert record["face_box"] == face.box.tolist()
    Image.fromarray(photo).save(tmp_path / "cut.png")
    samples = [Sample("all/happy/cut.png", 3, "all", path=tmp_path / "cut.png")]
    for rule in (CropRule("box", 1.0), CropRule("roll", 1.3), CropRule("similarity", 1.0)):
        api = EmotionRecognizer(random_weights, detector=recognizer.detector, crop_rule=rule)
        size = api.spec.input_size
        dataset = FaceDataset(samples, size, REGIONS, {record["id"]: record}, crop_rule=rule, name="photos")
        trained_on = dataset.decode(0)[0].transpose(1, 2, 0)
        validated_on = largest_face_crops([photo], lambda images: [[face]], rule, size)[0]
        used_on = api.crop_face(photo, face)[0]
        assert np.array_equal(trained_on, used_on), rule
        assert np.array_equal(validated_on, used_on), rule
    # A record written before face_box was recorded has only the clipped box: said, as that crop differs.
    old = {key: value for key, value in record.items() if key != "face_box"}
    with caplog.at_level(logging.WARNING):
        dataset = FaceDataset(samples, size, REGIONS, {old["id"]: old}, crop_rule=CropRule("box", 1.0), name="old")
    assert "1 of 1 photos have a face at the image's edge" in caplog.text and "annotate the set again" in caplog.text
    api = EmotionRecognizer(random_weights, detector=recognizer.detector, crop_rule=CropRule("box", 1.0))
    assert not np.array_equal(dataset.decode(0)[0].transpose(1, 2, 0), api.crop_face(photo, face)[0])


@pytest.mark.parametrize("crop_rule, cropped, warned", [
    ("{method: similarity, scale: 1.2}", False, True),
    ("{method: similarity, scale: 1.2}", True, False),
    ("{method: box, scale: 1.0}", False, False),
])
def test_a_crop_rule_no_training_set_is_cropped_by_is_said_at_the_start(tiny_sets, tmp_path, caplog, crop_rule,
                                                                         cropped, warned):
    from msfer.engine.config import load_config
    from msfer.engine.trainer import Trainer
    from msfer.model.checkpoint import describe

    overrides = [*TINY, f"data.root={tiny_sets / 'crops'}", f"data.crop_rule={crop_rule}"]
    if cropped:
        overrides.append(f"data.extra_train=[{{format: folder, root: {tiny_sets / 'photos'}, split: train, "
                         f"weight: 0.25, crop: true, annotations: {tiny_sets / 'photos' / 'regions.jsonl'}}}]")
    config = load_config(os.devnull, overrides)
    rule = CropRule.from_dict(config["data"]["crop_rule"])
    with caplog.at_level(logging.WARNING, logger="msfer.engine.trainer"):
        trainer = Trainer(config, tmp_path / "run", torch.device("cpu"), DistInfo(), None)
    said = "the rule is used only at inference and in the photo validation" in caplog.text
    assert said == warned, caplog.text
    # recorded all the same: a model trained on face crops can be measured with another inference crop
    assert describe(trainer.model, trainer.config)["crop_rule"] == rule.to_dict()
