"""scripts/study.py end to end: rows of real (tiny) trainings on a generated FER2013-style folder tree,
resumed, scored by their validation and by the study file's ``evaluate``, tabulated."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from msfer.labels import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]

# The fastest real model: MobileNetV2 classifier from scratch at 32 px, one epoch.
TINY_CONFIG = {
    "model": {"name": "classifier_mobilenetv2", "pretrained": False, "input_size": 32},
    "data": {"format": "fer2013", "val_split": "public_test", "num_workers": 0},
    "train": {"batch_size": 8, "schedule": "none"},
    "eval": {"batch_size": 16, "tta": False},
}


def study_main():
    spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def fer_tree(tmp_path_factory) -> Path:
    """FER2013's folder layout: train/ (3 per class) and public_test/ (2 per class), 24 px grey noise."""
    root = tmp_path_factory.mktemp("fer2013")
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("public_test", 2)):
        for name in EMOTIONS:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def study_file(tmp_path) -> Path:
    """Two rows differing in the learning rate; the data root and the evaluation's root through --path."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    study = {"config": "tiny.yaml", "epochs": 1, "description": "tiny", "overrides": ["data.root=${fer2013}"],
             "evaluate": [{"name": "public", "format": "fer2013", "root": "${fer2013}", "split": "public_test"}],
             "rows": [{"name": "slow", "description": "lr 1e-4", "overrides": ["train.lr=1.0e-4"]},
                      {"name": "fast", "description": "lr 1e-2", "overrides": ["train.lr=1.0e-2"]}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_trains_scores_resumes_and_tabulates(fer_tree, study_file, tmp_path):
    main, out = study_main(), tmp_path / "out"
    args = [str(study_file), "--out", str(out), "--path", f"fer2013={fer_tree}"]
    assert main(args) == 0
    runs = {name: out / f"{name}_seed0" for name in ("slow", "fast")}
    for run in runs.values():
        assert (run / "last.pt").is_file() and (run / "public" / "metrics.json").is_file()
        assert (out / f"{run.name}.log").is_file()
    result = json.loads((out / "study.json").read_text())
    assert list(result["rows"]) == ["slow", "fast"] and result["budget"]["epochs"] == 1
    for name, run in runs.items():
        [scores] = result["rows"][name]["runs"]
        public = json.loads((run / "public" / "metrics.json").read_text())
        assert public["n"] == 14 and not public["tta"] and public["weights"].endswith("last.pt")
        assert scores["public_overall_accuracy"] == public["overall_accuracy"]
        assert scores["public_mean_class_accuracy"] == public["mean_class_accuracy"]
        # the same weights on the same split as the last validation, both without TTA
        assert scores["public_overall_accuracy"] == pytest.approx(scores["val_overall_accuracy"])
    table = (out / "study.md").read_text()
    assert "| public overall (%) | public mean class (%) |" in table and "photo validation" not in table
    assert "| slow: lr 1e-4 | 1 |" in table and "| fast: lr 1e-2 | 1 |" in table

    # again: every run has reached the budget and been scored, so nothing trains or evaluates
    outputs = [path for run in runs.values() for path in (run / "last.pt", run / "public" / "metrics.json")]
    stamps = {path: path.stat().st_mtime_ns for path in outputs}
    assert main(args) == 0
    assert {path: path.stat().st_mtime_ns for path in outputs} == stamps

    # --summarize-only rewrites the tables from the runs, training nothing (it needs no --path)
    (out / "study.json").unlink()
    (out / "study.md").write_text("stale")
    assert main([str(study_file), "--out", str(out), "--summarize-only"]) == 0
    assert json.loads((out / "study.json").read_text()) == result
    assert (out / "study.md").read_text() == table
    assert {path: path.stat().st_mtime_ns for path in outputs} == stamps


def test_unknown_row_and_missing_path_are_errors_before_training(study_file, tmp_path, capsys):
    main, out = study_main(), tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([str(study_file), "--out", str(out), "--rows", "slow", "nope", "--path", "fer2013=/x"])
    assert exit_info.value.code == 2
    assert "unknown rows ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(study_file), "--out", str(out), "--rows", "slow"])
    assert exit_info.value.code == 2
    assert "needs --path fer2013=PATH" in capsys.readouterr().err
    assert not list(out.glob("*_seed*"))


def test_an_interrupted_run_resumes_with_this_sessions_paths_and_settings(fer_tree, study_file, tmp_path):
    """A run stopped short of the budget continues from its last.pt with the data where it is now: the filled
    ${NAME} overrides and the --set values are given again on resume (its saved config has the old ones)."""
    import shutil

    from msfer.model.checkpoint import load_checkpoint

    main, out = study_main(), tmp_path / "out"
    study = yaml.safe_load(study_file.read_text())
    study_file.write_text(yaml.safe_dump({**study, "epochs": 2}))
    before = shutil.copytree(fer_tree, tmp_path / "before")
    # a time budget that ends the run after its first epoch: the study reports the failure
    with pytest.raises(SystemExit, match="slow_seed0 failed"):
        main([str(study_file), "--out", str(out), "--rows", "slow", "--path", f"fer2013={before}",
              "--set", "train.max_minutes=1.0e-6"])
    run = out / "slow_seed0"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    after = before.rename(tmp_path / "after")  # the data moved between sessions

    assert main([str(study_file), "--out", str(out), "--rows", "slow", "--path", f"fer2013={after}",
                 "--set", "train.max_minutes=null"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["root"] == str(after) and saved["train"]["max_minutes"] is None
    assert saved["train"]["lr"] == 1.0e-4  # the row's own setting, kept from the first session
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    [scores] = json.loads((out / "study.json").read_text())["rows"]["slow"]["runs"]
    assert scores["public_overall_accuracy"] == pytest.approx(scores["val_overall_accuracy"])
