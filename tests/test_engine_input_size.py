"""A model input larger than 112 px, from colour photos stored larger, end to end: train, evaluate, export, recognize.

The input size is a free parameter of the region network (anchors, RoI level mapping and pools work in input
pixels); this pins it through every path at 160 px, with the camera-like augmentations on.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfer.cli import main as cli
from msfer.labels import EMOTIONS
from msfer.model.checkpoint import load_checkpoint, load_model

SIZE, STORED = 160, 200


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> Path:
    """7 classes x 2 colour 200 px photos per split (a coloured patch per class), with region annotations."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    records = []
    for split in ("train", "val"):
        for k, name in enumerate(EMOTIONS):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 90, (STORED, STORED, 3), dtype=np.uint8)
                pixels[40 + (k // 4) * 60 : 90 + (k // 4) * 60, 20 + (k % 4) * 40 : 60 + (k % 4) * 40, k % 3] = 240
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
                records.append({"id": f"{split}/{name}/{i}.png", "split": split, "label": k, "width": STORED,
                                "height": STORED, "status": "ok",
                                "regions": {"face": [10, 10, 190, 190], "left_eye": [40, 60, 90, 90],
                                            "right_eye": [110, 60, 160, 90], "nose": [80, 90, 120, 130],
                                            "mouth": [60, 140, 140, 170]}})
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def run_160(photo_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "run160"
    assert cli(["train", "--config", os.devnull, "--output-dir", str(run),
                "model.name=msfer_mobilenetv2", "model.pretrained=false", f"model.input_size={SIZE}",
                "model.fpn_channels=16", "model.head_channels=8", "model.detector_channels=8",
                "data.format=folder", f"data.root={photo_data}", f"data.annotations={photo_data / 'regions.jsonl'}",
                "data.val_split=val", f"data.image_size={STORED}", "data.num_workers=0", "train.batch_size=7",
                "eval.batch_size=14", "train.epochs=1", "train.device=cpu",
                "data.augment.greyscale=0.3", "data.augment.hue=0.05", "data.augment.blur=0.5",
                "data.augment.noise=0.5", "data.augment.jpeg=0.5"]) == 0
    return run


def test_a_160_px_model_trains_and_evaluates(run_160, photo_data, tmp_path):
    model, meta = load_model(run_160 / "best.pt")
    assert meta["input_size"] == SIZE == model.input_size
    assert load_checkpoint(run_160 / "best.pt")["config"]["data"]["augment"]["jpeg"] == 0.5
    output = model(torch.zeros(2, 3, SIZE, SIZE))
    assert output["logits"].shape == (2, 7)
    assert (output["boxes"] >= 0).all() and (output["boxes"] <= SIZE).all()  # regions in 160 px input pixels
    out = tmp_path / "eval"
    assert cli(["evaluate", "--weights", str(run_160), "--data", str(photo_data), "--format", "folder",
                "--split", "val", "--out", str(out), "--annotations", str(photo_data / "regions.jsonl"),
                "--num-workers", "0", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 14 and metrics["region_detection"]["per_region"]["face"]["n"] == 14


def test_a_160_px_model_recognizes_and_exports(run_160, astronaut, tmp_path):
    from msfer import EmotionRecognizer

    recognizer = EmotionRecognizer(run_160 / "best.pt", device="cpu")
    faces = recognizer.detect([astronaut])[0]
    crop, _ = recognizer.crop_face(astronaut, faces[0])
    assert crop.shape == (SIZE, SIZE, 3)
    face = recognizer.predict(astronaut)[0]
    assert sum(face.probs.values()) == pytest.approx(1.0, abs=1e-4)
    pytest.importorskip("onnx")
    exported = tmp_path / "model160.onnx"
    assert cli(["export", "--format", "onnx", "--out", str(exported), "--weights", str(run_160 / "best.pt")]) == 0
    onnx_face = EmotionRecognizer(exported, backend="onnx").predict(astronaut)[0]
    assert onnx_face.box == face.box
    assert onnx_face.probs == pytest.approx(face.probs, abs=1e-4)


@pytest.mark.parametrize("size", [100])
def test_the_region_network_takes_sizes_that_are_not_multiples_of_its_stride(size):
    from msfer.model import build_model

    torch.manual_seed(0)
    model = build_model({"name": "msfer_mobilenetv2", "pretrained": False, "input_size": size, "fpn_channels": 16,
                         "head_channels": 8, "detector_channels": 8})
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.2, 0.3, 0.45, 0.45], [0.55, 0.3, 0.8, 0.45], [0.4, 0.45, 0.6, 0.65],
                          [0.3, 0.7, 0.7, 0.85]]) * size
    targets = {"labels": torch.tensor([0, 3]), "boxes": boxes.expand(2, 5, 4), "box_valid": torch.ones(2, 5).bool()}
    images = torch.rand(2, 3, size, size)
    losses = model.train()(images, targets)["losses"]
    sum(losses.values()).backward()
    assert all(torch.isfinite(value) for value in losses.values())
    output = model.eval()(images)
    assert output["logits"].shape == (2, 7) and (output["boxes"] <= size).all()
