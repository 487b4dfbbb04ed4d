"""msfer train / evaluate end to end on tiny synthetic folder datasets (real code, tiny models)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from msfer.cli import main as cli
from msfer.errors import MsferError
from msfer.labels import EMOTIONS
from msfer.model.checkpoint import export_weights, load_model

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
                                "regions": {"face": [1, 1, 23, 23], "left_eye": [4, 6, 10, 10],
                                            "right_eye": [14, 6, 20, 10], "nose": [9, 10, 15, 15],
                                            "mouth": [7, 16, 17, 20]}})
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
    assert {"config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png", "tensorboard"} <= {
        p.name for p in run.iterdir()}
    rows = read_csv(run / "metrics.csv")
    assert len(rows) == 1
    # the rate of the last step taken: one-cycle's end, max_lr / 25 / 1e4 (not the schedule read past its end)
    assert float(rows[0]["lr"]) < yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] / 1e4
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
                "--region-source", "pseudo", "--num-workers", "0", "--device", "cpu"]) == 0
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
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("whole", "split"))
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
    content = torch.load(slim, weights_only=True)
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
    assert train("--config", os.devnull, "--output-dir", str(tmp_path / "r4"), *TINY, f"data.root={tiny_data}",
                 "model.frozen_bn=true") == 2
    assert "model.frozen_bn keeps the backbone's batch-norm statistics" in capsys.readouterr().err
    assert not (tmp_path / "r4" / "last.pt").exists()


def test_holdout_validates_on_the_stratified_part_of_the_training_split(tiny_data, tmp_path):
    from msfer.data.readers import read_dataset
    from msfer.data.splits import stratified_split
    from msfer.engine.config import load_config
    from msfer.engine.datasets import role_samples

    holdout = ["data.val_split=null", "data.holdout={fraction: 1/4, seed: 5}"]
    data = load_config(overrides=[*TINY, f"data.root={tiny_data}", *holdout])["data"]
    index = read_dataset(tiny_data, "folder")
    train_part, held_out = (role_samples(index, data, role) for role in ("train_split", "val_split"))
    assert ({s.id for s in held_out}, {s.id for s in train_part}) == tuple(
        {s.id for s in side}
        for side in reversed(stratified_split([s for s in index.samples if s.split == "train"], 1 / 4, 5)))
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
    # Photo validation after each epoch too: the ranks share it (each detects half of the photos), and the
    # metrics the run records are those one process finds for the same weights.
    from skimage.data import astronaut, coffee

    photos = tmp_path / "photos"
    for name, pixels in (("happy", astronaut()), ("sad", astronaut()[:, ::-1]), ("fear", coffee())):
        (photos / "val" / name).mkdir(parents=True)
        Image.fromarray(pixels).resize((256, 256 * pixels.shape[0] // pixels.shape[1])).save(photos / "val" / name /
                                                                                             "0.png")
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "msfer.cli", "train", "--config", os.devnull, "--output-dir", str(run), *TINY,
               f"data.root={tiny_data}", "train.epochs=2", "train.device=cpu",
               f"data.photo_val={{format: folder, root: {photos}, split: val}}", "eval.photo_val_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert checkpoint["metrics"]["n"] == 28  # validation gathered from both ranks: the whole split
    rows = read_csv(run / "metrics.csv")
    assert len(rows) == 2 and all(row["photo_val_faces_missed"] == "1" for row in rows)
    recorded = checkpoint["photo_val"]  # epoch 2's, gathered from both ranks
    assert recorded["n"] == 3 and recorded["detection"]["missed_ids"] == ["val/fear/0.png"]
    assert float(rows[1]["photo_val_overall_accuracy"]) == recorded["overall_accuracy"]
    assert train("--resume", str(run / "last.pt"), "--test-only") == 0  # one process, the same weights
    alone = json.loads((run / "eval_photo_val" / "metrics.json").read_text())
    for key in ("n", "overall_accuracy", "mean_class_accuracy", "confusion_matrix", "detection"):
        assert alone[key] == recorded[key], key


# --- A kill during an epoch's commit (metrics.csv, best.pt, last.pt) ----------------------------------------------
# A real write failure stands in for the kill: a directory where the file's temporary copy goes makes that write
# fail (exit 2), after the files before it in the commit were written and before the ones after it.

COMMIT = ["--config", os.devnull, *TINY, "train.epochs=2", "train.val_every=2"]  # epoch 1 unvalidated: epoch 2 is best
COMPARED = ("train_loss", "train_accuracy", "val_overall_accuracy", "val_mean_class_accuracy", "lr")


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert train("--output-dir", str(run), *COMMIT, f"data.root={tiny_data}") == 0
    return run


def assert_consistent(run: Path, reference: Path, epochs: int) -> None:
    """One row per epoch, best.pt = the best epoch the run records, and the same numbers as the reference run."""
    from msfer.model.checkpoint import load_checkpoint

    rows, expected = read_csv(run / "metrics.csv"), read_csv(reference / "metrics.csv")
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, epochs + 1)]
    for row, other in zip(rows, expected):
        for key in COMPARED:
            if other[key] == "":  # an epoch without validation
                assert row[key] == "", key
            else:
                assert float(row[key]) == pytest.approx(float(other[key]), rel=1e-6, abs=1e-9), key
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["epoch"] == epochs and best["epoch"] == last["best"]["epoch"]
    assert float(rows[best["epoch"] - 1]["val_mean_class_accuracy"]) == best["metrics"]["mean_class_accuracy"]
    assert load_model(run)[1]["epoch"] == best["epoch"]  # what predict and evaluate use for the run folder
    reference_last = load_checkpoint(reference / "last.pt")
    assert all(torch.allclose(last["model"][k].float(), reference_last["model"][k].float(), atol=1e-6)
               for k in last["model"])
    assert not list(run.glob(".msfer-*"))  # no temporary file left behind


def fail_writing(monkeypatch, name: str) -> None:
    """Make every write of a file called ``name`` fail as a full disk does (after the earlier files of a commit)."""
    import errno

    import msfer.files

    real = msfer.files.temporary_beside

    def refuse(path, suffix):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, suffix)

    monkeypatch.setattr(msfer.files, "temporary_beside", refuse)


@pytest.mark.parametrize("killed_at", ["metrics.csv", "best.pt", "last.pt"])
def test_a_kill_during_a_commit_resumes_consistently(tiny_data, uninterrupted, tmp_path, killed_at, capsys,
                                                     monkeypatch):
    from msfer.model.checkpoint import load_checkpoint

    run = tmp_path / "run"
    # Epoch 1 committed (the time budget stops the run there).
    assert train("--output-dir", str(run), *COMMIT, f"data.root={tiny_data}", "train.max_minutes=1e-9") == 0
    with monkeypatch.context() as patch:
        fail_writing(patch, killed_at)
        assert train("--resume", str(run), "train.max_minutes=null") == 2
    assert f"cannot write {run / killed_at}" in capsys.readouterr().err
    # What the kill left: epoch 2's files up to the failed one, last.pt still at epoch 1.
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len(read_csv(run / "metrics.csv")) == (1 if killed_at == "metrics.csv" else 2)
    assert (run / "best.pt").exists() == (killed_at == "last.pt")
    assert not list(run.glob(".msfer-*"))  # the failed write removed its temporary file
    assert train("--resume", str(run), "train.max_minutes=null") == 0
    assert "best epoch 2 " in capsys.readouterr().out
    assert_consistent(run, uninterrupted, epochs=2)


@pytest.mark.parametrize("killed_at", ["best.pt", "last.pt"])
def test_a_kill_during_the_first_commit_says_start_over(tiny_data, tmp_path, killed_at, capsys, monkeypatch):
    from msfer.model.checkpoint import load_checkpoint

    run = tmp_path / "run"
    one_epoch = ["--output-dir", str(run), "--config", os.devnull, *TINY, f"data.root={tiny_data}", "train.epochs=1"]
    with monkeypatch.context() as patch:
        fail_writing(patch, killed_at)
        assert train(*one_epoch) == 2
    assert not (run / "last.pt").exists() and len(read_csv(run / "metrics.csv")) == 1
    capsys.readouterr()
    # Neither message sends the user to a --resume that cannot work.
    assert train(*one_epoch) == 2
    error = capsys.readouterr().err
    assert "no last.pt" in error and "--overwrite" in error and "--resume" not in error
    assert train("--resume", str(run)) == 2
    error = capsys.readouterr().err
    assert f"{run} holds no last.pt" in error and "--overwrite" in error
    # --overwrite starts fresh files: one row, one TensorBoard event file, a best.pt of this run.
    assert train(*one_epoch, "--overwrite") == 0
    assert [row["epoch"] for row in read_csv(run / "metrics.csv")] == ["1"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["epoch"] == best["epoch"] == 1
    assert all(torch.equal(last["model"][k], best["model"][k]) for k in last["model"])


def test_a_run_left_inconsistent_by_an_older_msfer_is_repaired_on_resume(uninterrupted, tmp_path):
    """Older msfer wrote last.pt before best.pt and appended to metrics.csv.

    A kill then left best.pt behind and rows twice.
    """
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "best.pt").unlink()
    with open(run / "metrics.csv", "a") as handle:
        handle.write((run / "metrics.csv").read_text().splitlines()[-1] + "\n")  # epoch 2 twice
    assert train("--resume", str(run)) == 0  # nothing left to train
    assert_consistent(run, uninterrupted, epochs=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_training_image_stops_the_run_with_one_line_naming_it(tiny_data, tmp_path, capsys, workers):
    # With loader workers torch re-raises the worker's error with its traceback in front; the user reads one line.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = data / "train" / EMOTIONS[3] / "2.png"
    bad.write_bytes(b"not a png")
    assert train("--config", os.devnull, "--output-dir", str(tmp_path / "run"), *TINY, f"data.root={data}",
                 "train.epochs=1", "data.cache_images=true", f"data.num_workers={workers}") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.index("msfer train: error: "):].strip()  # after the caching progress bar
    assert str(bad) in message and "\n" not in message
    assert bad.read_bytes() == b"not a png"  # the input is left as it was


def test_a_full_disk_during_training_is_one_error_line_and_leaves_the_last_commit(tiny_data, uninterrupted,
                                                                                  tmp_path):
    """On a real file system with room for epoch 1's files but not for epoch 2's best.pt."""
    from small_filesystem import msfer_command, on_small_filesystem

    from msfer.model.checkpoint import load_checkpoint

    disk, after = tmp_path / "disk", tmp_path / "after"
    checkpoint = (uninterrupted / "last.pt").stat().st_size
    done = on_small_filesystem(disk, checkpoint * 3 // 2 + 2**20,
                               msfer_command("train", "--output-dir", str(disk / "run"), *COMMIT,
                                             f"data.root={tiny_data}"), after)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == \
        f"msfer train: error: cannot write {disk / 'run' / 'best.pt'}: No space left on device"
    run = after / "run"
    assert not list(run.glob(".msfer-*"))  # the partial checkpoint was removed from the full disk
    assert not (run / "best.pt").exists() and load_checkpoint(run / "last.pt")["epoch"] == 1  # the last commit
