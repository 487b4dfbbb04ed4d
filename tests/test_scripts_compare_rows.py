"""scripts/compare_rows.py: paired, seed-averaged differences of two study rows from a benchmark's predictions."""
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUITE = """sets:
  - {name: crops, domain: crops, format: fer2013, root: fer2013, split: public_test, mode: crops}
  - {name: photos, domain: photos, format: folder, root: photos, split: val, mode: photos}
  - {name: extra, domain: null, format: folder, root: photos, split: val, mode: photos}
"""


def probs_for(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """One-hot probabilities that are right where ``right`` is, else on the next class."""
    predicted = np.where(right, labels, (labels + 1) % 7)
    return np.eye(7)[predicted]


def compare_rows(folder: Path, arrays: dict, row: str, against: str) -> dict[str, list[str]]:
    """The script's table for ``arrays`` (as msfer benchmark's predictions.npz) on SUITE: set -> its cells."""
    np.savez(folder / "predictions.npz", **arrays)
    (folder / "suite.yaml").write_text(SUITE)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_rows.py"), str(folder / "predictions.npz"),
                          str(folder / "suite.yaml"), "--row", row, "--against", against],
                         capture_output=True, text=True, check=True)
    return {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]]
            for line in run.stdout.splitlines()[2:]}


def test_rows_are_averaged_over_seeds_and_compared_pair_by_pair(tmp_path):
    labels = np.arange(40) % 7
    arrays = {}
    for name in ("crops", "photos", "extra"):
        arrays[f"{name}/labels"] = labels
        # row a: seed 0 right on every image, seed 1 on none -> 50%; row b: both seeds right on the first 10 -> 25%
        arrays[f"{name}/probs/a0"] = probs_for(labels, np.ones(40, bool))
        arrays[f"{name}/probs/a1"] = probs_for(labels, np.zeros(40, bool))
        arrays[f"{name}/probs/b0"] = arrays[f"{name}/probs/b1"] = probs_for(labels, np.arange(40) < 10)
    no_face = arrays["photos/probs/a0"].copy()
    no_face[0] = np.nan  # a photo without a face is wrong, never class 0
    arrays["photos/probs/a0"] = no_face
    lines = compare_rows(tmp_path, arrays, "a=a0,a1", "b=b0,b1")
    assert set(lines) == {"crops", "photos", "suite"}  # a set outside the score is not compared
    assert lines["crops"][:2] == ["50.0", "25.0"] and lines["crops"][2].startswith("+25.0 [")
    assert lines["photos"][:2] == ["48.8", "25.0"]  # 39 of 40 right for a0
    assert lines["suite"][2].startswith("+24.4 [")


def test_a_plus_joins_models_into_the_ensemble_of_their_mean_probabilities(tmp_path):
    labels = np.arange(40) % 7
    first_half = np.arange(40) < 20

    def confident_where(right: np.ndarray) -> np.ndarray:  # right: 0.9 on the label; wrong: 0.6 on the next class
        probs = np.zeros((40, 7))
        probs[np.arange(40), labels] = np.where(right, 0.9, 0.4)
        probs[np.arange(40), (labels + 1) % 7] = np.where(right, 0.1, 0.6)
        return probs

    arrays = {}
    for name in ("crops", "photos", "extra"):
        arrays[f"{name}/labels"] = labels
        arrays[f"{name}/probs/a0"] = confident_where(first_half)
        arrays[f"{name}/probs/a1"] = confident_where(~first_half)
    arrays["photos/probs/a0"][0] = arrays["photos/probs/a1"][0] = np.nan  # no face: wrong for the ensemble too
    lines = compare_rows(tmp_path, arrays, "ensemble=a0+a1", "a=a0,a1")
    assert lines["crops"][:2] == ["100.0", "50.0"]  # each alone is right on half; their mean is right on all
    assert lines["photos"][:2] == ["97.5", "48.8"]


def test_a_model_named_with_a_plus_is_itself_not_an_ensemble(tmp_path):
    labels = np.arange(40) % 7
    arrays = {}
    for name in ("crops", "photos", "extra"):  # "sfew+grey": a name msfer benchmark gives runs/sfew+grey/last.pt
        arrays[f"{name}/labels"] = labels
        arrays[f"{name}/probs/sfew+grey"] = probs_for(labels, np.ones(40, bool))
        arrays[f"{name}/probs/b"] = probs_for(labels, np.zeros(40, bool))
    lines = compare_rows(tmp_path, arrays, "grey=sfew+grey", "b=b")
    assert lines["crops"][:2] == ["100.0", "0.0"]


def test_an_empty_or_broken_predictions_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    for content in (b"", b"PK\x03\x04 cut short"):
        (tmp_path / "predictions.npz").write_bytes(content)
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_rows.py"),
                              str(tmp_path / "predictions.npz"), str(tmp_path / "suite.yaml"),
                              "--row", "a=a", "--against", "b=b"], capture_output=True, text=True)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert "predictions.npz: not a predictions.npz of msfer benchmark" in run.stderr


def run_on_files(tmp_path: Path, parts: list[dict], row: str, against: str) -> subprocess.CompletedProcess:
    """The script on one predictions file per entry of ``parts`` (each as msfer benchmark writes it)."""
    (tmp_path / "suite.yaml").write_text(SUITE)
    paths = []
    for index, arrays in enumerate(parts):
        paths.append(tmp_path / f"run{index}" / "predictions.npz")
        paths[-1].parent.mkdir()
        np.savez(paths[-1], **arrays)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_rows.py"), *map(str, paths),
                           str(tmp_path / "suite.yaml"), "--row", row, "--against", against],
                          capture_output=True, text=True)


def test_runs_scored_apart_are_compared_as_one(tmp_path):
    labels = np.arange(40) % 7
    plain, tta = {}, {}
    for name in ("crops", "photos", "extra"):
        plain[f"{name}/labels"] = tta[f"{name}/labels"] = labels
        plain[f"{name}/probs/a"] = probs_for(labels, np.arange(40) < 10)
        tta[f"{name}/probs/a_tta"] = probs_for(labels, np.arange(40) < 30)
    run = run_on_files(tmp_path, [plain, tta], "tta=a_tta", "plain=a")
    assert run.returncode == 0, run.stderr
    cells = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]]
             for line in run.stdout.splitlines()[2:]}
    assert cells["crops"][:2] == ["75.0", "25.0"] and cells["suite"][2].startswith("+50.0 [")


def test_files_of_other_images_or_other_predictions_under_one_name_are_refused_naming_both(tmp_path):
    labels = np.arange(40) % 7
    some_right, others_right = probs_for(labels, labels > 2), probs_for(labels, labels < 2)
    ids = np.array([f"{i:04d}.jpg" for i in range(40)])
    first = {"crops/labels": labels, "crops/ids": ids, "photos/labels": labels, "crops/probs/a": some_right,
             "photos/probs/a": some_right}
    checks = {"other_labels": ({**first, "crops/labels": (labels + 1) % 7}, "hold different images of crops"),
              "other_ids": ({**first, "crops/ids": ids[::-1]}, "hold different images of crops"),
              "other_predictions": ({**first, "crops/probs/a": others_right},
                                    "model 'a' on crops has other predictions in")}
    for folder, (second, message) in checks.items():
        (tmp_path / folder).mkdir()
        run = run_on_files(tmp_path / folder, [first, second], "a=a", "a2=a")
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert message in run.stderr
        assert f"{folder}/run0/predictions.npz" in run.stderr and f"{folder}/run1/predictions.npz" in run.stderr
    (tmp_path / "again").mkdir()  # a reference scored again in a later run, the same predictions: read once
    run = run_on_files(tmp_path / "again", [first, {**first, "crops/probs/b": others_right,
                                                    "photos/probs/b": others_right}], "a=a", "b=b")
    assert run.returncode == 0, run.stderr


def test_a_missing_file_or_a_single_array_is_one_line_naming_it(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    np.save(tmp_path / "one.npy", np.arange(3))
    for path, message in ((tmp_path / "absent.npz", "absent.npz: no such file"),
                          (tmp_path / "one.npy", "one.npy: not a predictions.npz of msfer benchmark")):
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_rows.py"), str(path),
                              str(tmp_path / "suite.yaml"), "--row", "a=a", "--against", "b=b"],
                             capture_output=True, text=True)
        assert run.returncode == 2 and "Traceback" not in run.stderr and message in run.stderr
