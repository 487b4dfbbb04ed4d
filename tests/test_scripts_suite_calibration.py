"""scripts/suite_calibration.py: calibrations fitted on halves of a benchmark's sets and scored on the other halves,
and (``--photo-seeds``) the ways of calibrating faces found in photos compared over several pairs of halves."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from msfer.engine.calibration import photo_temperatures, softmax

ROOT = Path(__file__).resolve().parents[1]
LAW = {"temperature": 1.2, "per_degree": 0.04, "yaw_limit": 45.0}


def photo_set(n: int, seed: int, turn: float) -> dict:
    """A benchmark's arrays for one photo set whose faces are overconfident the more their head is turned: labels
    drawn from softmax(z / T(yaw)), the model's probabilities softmax(z); one photo without a face."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, 7))
    yaw = rng.uniform(-turn, turn, size=n)
    truth = softmax(logits / photo_temperatures(yaw, LAW)[:, None])
    labels = np.array([rng.choice(7, p=p) for p in truth])
    probs = softmax(logits)
    probs[0], yaw[0] = np.nan, np.nan
    return {"labels": labels, "yaw": yaw, "probs/m": probs, "reported/m": probs, "ids": np.arange(n).astype(str)}


def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "suite_calibration.py"),
                           str(folder / "predictions.npz"), "--model", "m", *args],
                          capture_output=True, text=True, check=True)


def test_the_photo_temperature_is_compared_with_other_calibrations_over_seeds(tmp_path):
    arrays = {f"{name}/{key}": value for name, (seed, turn) in {"posed": (0, 15.0), "film": (1, 60.0)}.items()
              for key, value in photo_set(600, seed, turn).items()}
    np.savez(tmp_path / "predictions.npz", **arrays)
    run(tmp_path, "--fit-sets", "posed", "film", "--photo-seeds", "2", "--out", str(tmp_path / "out.json"))
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["sets"] == ["posed", "film"] and result["seeds"] == 2
    nll = {way: figures["mean_nll"] for way, figures in result["ways"].items()}
    # the law the labels were drawn with is the photo temperature's: it beats no temperature and one for all
    assert nll["photo temperature (yaw)"] < nll["one temperature"] < nll["before any photo temperature"]
    assert result["ways"]["photo temperature (yaw)"]["ece"]["film"] < \
        result["ways"]["before any photo temperature"]["ece"]["film"]

    # the first mode reads the probabilities as a user is given them (here uniform for the film set) and refits on top
    arrays["film/reported/m"] = np.where(np.isnan(arrays["film/probs/m"]), np.nan, 1 / 7)
    np.savez(tmp_path / "predictions.npz", **arrays)
    table = run(tmp_path, "--fit-sets", "posed", "film").stdout
    assert f"/ {np.log(7):.3f} |" in next(line for line in table.splitlines() if line.startswith("| film"))
    held_out = {line.split("|")[1].strip(): int(line.split("|")[2]) for line in table.splitlines()[4:]}
    assert set(held_out) == {"posed", "film"} and all(299 <= n <= 301 for n in held_out.values())  # 599 faces
