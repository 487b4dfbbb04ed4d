"""Model files are read with torch.load(weights_only=True): a pickled payload never runs, in any command."""
from __future__ import annotations

import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfer.cli import main as cli
from msfer.engine.runtime import restore_rng_states, rng_states
from msfer.errors import MsferError
from msfer.labels import EMOTIONS
from msfer.model.checkpoint import export_weights, load_checkpoint, load_model, save_checkpoint

UNSAFE = "is not a safe msfer checkpoint"


class Payload:
    """Unpickling this creates the file ``marker`` (a stand-in for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def booby_trapped(random_weights, tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with one extra entry that runs code when unpickled; returns (file, marker)."""
    marker = tmp_path / "payload_ran"
    checkpoint = load_checkpoint(random_weights)
    checkpoint["notes"] = Payload(marker)
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    # The file is a working attack: an unsafe load runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def assert_refused(text: str, path: Path) -> None:
    assert UNSAFE in text and str(path) in text, text


def test_the_loader_and_the_api_refuse_a_payload(booby_trapped, tmp_path):
    from msfer import EmotionRecognizer

    path, marker = booby_trapped
    for load in (load_checkpoint, load_model, lambda p: export_weights(p, tmp_path / "slim.pt"),
                 EmotionRecognizer, lambda p: EmotionRecognizer(p, backend="onnx")):
        with pytest.raises(MsferError) as error:
            load(path)
        assert_refused(str(error.value), path)
        assert not marker.exists()
    assert not (tmp_path / "slim.pt").exists()
    # A run directory's file is refused the same way.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "best.pt")
    with pytest.raises(MsferError, match=re.escape(f"{run / 'best.pt'} {UNSAFE}")):
        load_model(run)
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["torch.save, legacy format", "pickle.dump"])
def test_payloads_in_older_and_raw_pickle_files_are_refused(random_weights, tmp_path, writer):
    marker = tmp_path / "payload_ran"
    checkpoint = {**load_checkpoint(random_weights), "notes": Payload(marker)}
    path = tmp_path / "model.pt"
    if writer == "pickle.dump":
        path.write_bytes(pickle.dumps(checkpoint, protocol=4))
    else:
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    with pytest.raises(MsferError) as error:
        load_checkpoint(path)
    assert_refused(str(error.value), path)
    assert not marker.exists()


def test_every_command_refuses_a_payload(booby_trapped, tmp_path, capsys):
    path, marker = booby_trapped
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    data = tmp_path / "data"
    for k, name in enumerate(EMOTIONS):  # a tiny folder dataset for evaluate
        (data / "val" / name).mkdir(parents=True)
        Image.fromarray(np.full((48, 48), 30 * k, np.uint8)).save(data / "val" / name / "0.png")
    run = tmp_path / "run"  # a run directory whose last.pt carries the payload
    run.mkdir()
    shutil.copy(path, run / "last.pt")
    commands = {
        "predict": ["predict", str(photo), "--weights", str(path), "--out", str(tmp_path / "out.jsonl")],
        "evaluate": ["evaluate", "--weights", str(path), "--data", str(data), "--format", "folder", "--split", "val",
                     "--out", str(tmp_path / "eval"), "--num-workers", "0", "--device", "cpu"],
        "export": ["export", "--weights", str(path), "--out", str(tmp_path / "model.onnx")],
        "serve": ["serve", "--weights", str(path), "--port", "1"],  # refused before it would listen
        "report": ["report", str(tmp_path / "clip.mp4"), "--weights", str(path), "--out", str(tmp_path / "report")],
        "train --resume FILE": ["train", "--resume", str(path)],
        "train --resume DIR": ["train", "--resume", str(run)],
        "train --test-only": ["train", "--resume", str(path), "--test-only"],
    }
    for name, argv in commands.items():
        assert cli(argv) == 2, name
        stderr = capsys.readouterr().err
        assert_refused(stderr, run / "last.pt" if name == "train --resume DIR" else path)
        assert not marker.exists(), name
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "out.jsonl").exists()


def test_the_bundled_model_is_plain_data():
    from msfer.weights import default_weights_path

    checkpoint = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    assert set(checkpoint["model"]) and checkpoint["classes"] == list(EMOTIONS)


def test_rng_states_are_plain_data_and_restore_exactly(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    path = save_checkpoint({"model": {}, "config": {}, "rng": rng_states()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(1))
    restore_rng_states(torch.load(path, weights_only=True)["rng"])  # no allowances needed
    assert (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(1)) == expected


def test_numpy_values_are_saved_as_plain_numbers(tmp_path):
    path = save_checkpoint({"model": {"w": torch.ones(2)}, "config": {},
                            "metrics": {"accuracy": np.float64(0.5), "counts": np.arange(3)}}, tmp_path / "m.pt")
    metrics = torch.load(path, weights_only=True)["metrics"]
    assert metrics == {"accuracy": 0.5, "counts": [0, 1, 2]} and type(metrics["accuracy"]) is float
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\] is a Payload"):
        save_checkpoint({"model": {}, "config": {}, "extra": Payload(tmp_path / "x")}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_a_checkpoint_of_an_older_msfer_still_loads(random_weights, tmp_path):
    """Before, the numpy RNG state was stored as numpy's own tuple with a uint32 array: still read, still restored."""
    checkpoint = load_checkpoint(random_weights)
    np.random.seed(5)
    checkpoint["rng"] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                         "cuda": []}
    expected = np.random.random()
    torch.save(checkpoint, tmp_path / "old.pt")
    restore_rng_states(load_checkpoint(tmp_path / "old.pt")["rng"])
    assert np.random.random() == expected
