"""msfer train / evaluate end to end on tiny synthetic folder datasets (real code, tiny models)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfer.cli import main as cli
from msfer.engine.checkpoint import export_weights, load_model
from msfer.errors import MsferError
from msfer.labels import EMOTIONS

# The fastest real model: MobileNetV2 classifier from scratch at 32 px.
TINY = ["model.name=classifier_mobilenetv2", "model.pretrained=false", "model.input_size=32",
        "data.format=folder", "data.val_split=val", "data.num_workers=0", "train.batch_size=8", "eval.batch_size=16"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """7 classes x 4 images per split, 24 px grey; each class has a bright patch in its own place; plus annotations."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    records = []
    for split in ("train", "val"):
        for k, name in enumerate(EMOTIONS):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 60, (24, 24), dtype=np.uint8)
                pixels[3 + (k // 4) * 9 : 9 + (k // 4) * 9, 2 + (k % 4) * 5 : 7 + (k % 4) * 5] = 230
                Image.fromarray(pixels).save(folder / f"{i}.png")
                records.append({"id": f"{split}/{name}/{i}.png", "split": split, "label": k, "width": 24, "height": 24,
                                "status": "ok" if i else "no_face",
                                "regions": {"face": [1, 1, 23, 23], "left_eye": [4, 6, 10, 10], "right_eye": [14, 6, 20, 10],
                                            "nose": [9, 10, 15, 15], "mouth": [7, 16, 17, 20]}})
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def train(*args: str) -> int:
    return cli(["train", *args])


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_train_then_evaluate_the_region_model(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--config", os.devnull, "--output-dir", str(run), *TINY, "model.name=msfer_mobilenetv2",
                 "model.input_size=48", f"data.root={tiny_data}", f"data.annotations={tiny_data / 'regions.jsonl'}",
                 "train.epochs=1", "data.cache_images=true") == 0
    assert {"config.yaml", "last.pt", "best.pt", "metrics.csv", "tensorboard"} <= {p.name for p in run.iterdir()}
    assert len(read_csv(run / "metrics.csv")) == 1
    out = tmp_path / "eval"
    assert cli(["evaluate", "--weights", str(run), "--data", str(tiny_data), "--format", "folder", "--split", "val",
                "--out", str(out), "--annotations", str(tiny_data / "regions.jsonl"), "--tta", "--num-workers", "0",
                "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 28 and len(metrics["confusion_matrix"]) == 7
    assert set(metrics["region_detection"]["per_region"]) == {"face", "left_eye", "right_eye", "nose", "mouth"}
    assert metrics["region_detection"]["per_region"]["face"]["n"] == 21  # the no_face images are not scored
    assert (out / "confusion_matrix.png").is_file()
    # pseudo-label regions at test time (the ablation): the detector's weights are set aside
    assert cli(["evaluate", "--weights", str(run / "best.pt"), "--data", str(tiny_data), "--format", "folder",
                "--split", "val", "--out", str(tmp_path / "pseudo"), "--annotations", str(tiny_data / "regions.jsonl"),
                "--regions", "pseudo", "--num-workers", "0", "--device", "cpu"]) == 0
    assert "mean class accuracy" in capsys.readouterr().out


def test_resume_continues_exactly(tiny_data, tmp_path):
    common = ["--config", os.devnull, *TINY, f"data.root={tiny_data}", "train.epochs=2", "train.ema=0.9",
              "data.balanced_sampling=true", "train.class_weights=balanced", "model.label_smoothing=0.1"]
    assert train("--output-dir", str(tmp_path / "whole"), *common) == 0
    # A tiny time budget stops the run after its first epoch, at an epoch boundary.
    assert train("--output-dir", str(tmp_path / "split"), *common, "train.max_minutes=1e-9") == 0
    assert len(read_csv(tmp_path / "split" / "metrics.csv")) == 1
    assert train("--resume", str(tmp_path / "split"), "train.max_minutes=null") == 0
    whole, split = read_csv(tmp_path / "whole" / "metrics.csv"), read_csv(tmp_path / "split" / "metrics.csv")
    assert len(split) == 2
    for key in ("train_loss", "train_accuracy", "val_overall_accuracy", "lr"):
        assert float(split[1][key]) == pytest.approx(float(whole[1][key]), rel=1e-6, abs=1e-9), key
    a, b = torch.load(tmp_path / "whole" / "last.pt", weights_only=False), torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert all(torch.allclose(a["ema"][k].float(), b["ema"][k].float(), atol=1e-6) for k in a["ema"])
    # a run directory is never overwritten by accident
    assert train("--output-dir", str(tmp_path / "whole"), *common) == 2


def test_checkpoint_describes_itself(tiny_data, tmp_path):
    assert train("--config", os.devnull, "--output-dir", str(tmp_path / "run"), *TINY, f"data.root={tiny_data}",
                 "train.epochs=1") == 0
    model, meta = load_model(tmp_path / "run" / "best.pt")
    assert meta["classes"] == list(EMOTIONS) and meta["input_size"] == 32 == model.input_size
    assert {"config", "mean", "std", "region_names", "metrics", "msfer_version", "epoch"} <= set(meta)
    assert meta["metrics"]["n"] == 28
    slim = export_weights(tmp_path / "run" / "best.pt", tmp_path / "slim.pt")
    content = torch.load(slim, weights_only=False)
    assert "optimizer" not in content and all(v.dtype != torch.float32 for v in content["model"].values())
    slim_model, _ = load_model(slim)  # fp16 weights come back as float32
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(images)["logits"], slim_model(images)["logits"], atol=0.05)
    with pytest.raises(MsferError, match="not an msfer checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        load_model(tmp_path / "other.pt")


def test_test_only_and_clear_errors(tiny_data, tmp_path, capsys):
    assert train("--config", os.devnull, "--output-dir", str(tmp_path / "run"), *TINY, f"data.root={tiny_data}",
                 "train.epochs=1") == 0
    assert train("--resume", str(tmp_path / "run"), "--test-only") == 0
    assert (tmp_path / "run" / "eval_val" / "metrics.json").is_file()
    assert train("--config", os.devnull, "--output-dir", str(tmp_path / "r2"), *TINY, f"data.root={tiny_data}",
                 "data.val_split=test") == 2
    assert "data.val_split='test' has no samples" in capsys.readouterr().err
    assert train("--config", os.devnull, "--output-dir", str(tmp_path / "r3"), *TINY, f"data.root={tiny_data}",
                 "model.name=msfer_mobilenetv2") == 2
    assert "data.annotations is not set" in capsys.readouterr().err


def test_holdout_validates_on_the_stratified_part_of_the_training_split(tiny_data, tmp_path):
    from msfer.data.readers import read_dataset
    from msfer.data.splits import stratified_split
    from msfer.engine.config import load_config
    from msfer.engine.train import role_samples

    holdout = ["data.val_split=null", "data.holdout={fraction: 1/4, seed: 5}"]
    data = load_config(overrides=[*TINY, f"data.root={tiny_data}", *holdout])["data"]
    index = read_dataset(tiny_data, "folder")
    train_part, held_out = (role_samples(index, data, role) for role in ("train_split", "val_split"))
    assert ({s.id for s in held_out}, {s.id for s in train_part}) == tuple(
        {s.id for s in side} for side in reversed(stratified_split([s for s in index.samples if s.split == "train"], 1 / 4, 5)))
    assert sorted(s.label for s in held_out) == list(range(7))  # one of each class's four
    assert not {s.id for s in held_out} & {s.id for s in train_part} and len(train_part) == 21
    assert not any(s.id.startswith("val/") for s in train_part + held_out)  # the folder's own val split is unused

    run = tmp_path / "run"
    assert train("--config", os.devnull, "--output-dir", str(run), *TINY, f"data.root={tiny_data}", *holdout,
                 "train.epochs=1") == 0
    assert torch.load(run / "best.pt", weights_only=False)["metrics"]["n"] == 7
    assert train("--resume", str(run), "--test-only") == 0  # the same holdout, from the saved config
    assert json.loads((run / "eval_holdout" / "metrics.json").read_text())["n"] == 7


def test_two_process_gloo_ddp(tiny_data, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "msfer.cli", "train", "--config", os.devnull, "--output-dir", str(run), *TINY,
               f"data.root={tiny_data}", "train.epochs=1", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert checkpoint["metrics"]["n"] == 28  # validation gathered from both ranks: the whole split
    rows = read_csv(run / "metrics.csv")
    assert len(rows) == 1
