"""`msfer export --format onnx` and the ONNX Runtime backend: same numbers as PyTorch on real faces."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from msfer.cli import main
from msfer.errors import MsferError
from msfer.inference.backends import OnnxBackend, TorchBackend
from msfer.inference.recognizer import EmotionRecognizer

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, random_weights):
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--format", "onnx", "--out", str(out), "--weights", str(random_weights)]) == 0
    return out


def real_face_crops(recognizer: EmotionRecognizer, astronaut: np.ndarray) -> np.ndarray:
    """Normalised network inputs of real faces: the astronaut, mirrored, and two in one photo at other scales."""
    from PIL import Image

    photos = [astronaut, astronaut[:, ::-1].copy(), np.asarray(Image.fromarray(astronaut).resize((900, 900)))]
    crops = [recognizer.crop_face(photo, face)[0]
             for photo, faces in zip(photos, recognizer.detect(photos)) for face in faces]
    return recognizer.spec.normalise(np.stack(crops))


def test_onnx_file_is_valid_with_metadata_and_dynamic_batch(onnx_file):
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    assert max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")) >= 17
    metadata = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    assert metadata["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert metadata["input_size"] == 112 and len(metadata["mean"]) == len(metadata["std"]) == 3
    assert metadata["region_names"] == ["face", "left_eye", "right_eye", "nose", "mouth"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value


def test_onnx_matches_pytorch_on_real_faces(onnx_file, random_weights, astronaut):
    torch_net = TorchBackend(random_weights, "cpu")
    onnx_net = OnnxBackend(onnx_file, str(onnx_file))
    recognizer = EmotionRecognizer(random_weights)
    batch = real_face_crops(recognizer, astronaut)
    assert len(batch) == 3
    for inputs in (batch, batch[:1]):  # batched and single
        torch_logits, torch_boxes = torch_net(inputs)
        onnx_logits, onnx_boxes = onnx_net(inputs)
        assert np.abs(onnx_logits - torch_logits).max() <= 1e-4
        assert np.abs(onnx_boxes - torch_boxes).max() <= 1e-4 * recognizer.spec.input_size


def test_recognizer_onnx_backend(onnx_file, random_weights, astronaut):
    torch_face = EmotionRecognizer(random_weights).predict(astronaut)[0]
    for weights in (onnx_file, random_weights):  # an exported file, or a checkpoint exported in memory
        onnx_face = EmotionRecognizer(weights, backend="onnx").predict(astronaut)[0]
        assert onnx_face.box == torch_face.box
        assert onnx_face.probs == pytest.approx(torch_face.probs, abs=1e-4)
    # An .onnx file picks the ONNX backend itself; it cannot run in PyTorch.
    assert EmotionRecognizer(onnx_file).predict(astronaut)[0].probs == pytest.approx(torch_face.probs, abs=1e-4)
    with pytest.raises(MsferError, match="is an ONNX model, which runs in ONNX Runtime, not PyTorch"):
        EmotionRecognizer(onnx_file, backend="torch")
    # An exported file named without the extension is still read as ONNX, by its content.
    unnamed = onnx_file.parent / "exported_model"
    unnamed.write_bytes(onnx_file.read_bytes())
    assert EmotionRecognizer(unnamed).predict(astronaut)[0].probs == pytest.approx(torch_face.probs, abs=1e-4)


def test_export_errors(tmp_path, random_weights):
    assert main(["export", "--out", str(tmp_path / "m.onnx"), "--weights", str(tmp_path / "absent.pt")]) == 2
    assert main(["export", "--out", str(tmp_path / "m.onnx"), "--weights", str(random_weights), "--opset", "13"]) == 2
    assert not (tmp_path / "m.onnx").exists()


def test_export_never_replaces_a_file_unasked_nor_the_checkpoint_it_reads(tmp_path, random_weights, capsys):
    import os
    import shutil

    weights = tmp_path / "copy.pt"
    shutil.copy(random_weights, weights)
    photo = tmp_path / "victim.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a photo")
    (tmp_path / "link.onnx").symlink_to(weights.name)
    os.link(weights, tmp_path / "hard.onnx")
    (tmp_path / "models").mkdir()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}

    def export(out: str, *extra: str) -> int:
        return main(["export", "--weights", str(weights), "--out", out, *extra])

    assert export(str(photo)) == 2
    assert "victim.jpg already exists: add --overwrite to replace it" in capsys.readouterr().err
    for name in ("copy.pt", "link.onnx", "hard.onnx"):  # the checkpoint by path, symbolic and hard link
        assert export(str(tmp_path / name), "--overwrite") == 2
        assert "never writes onto a file it reads" in capsys.readouterr().err
    assert export(str(tmp_path / "models"), "--overwrite") == 2
    assert "models is a folder; give a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # Path() would drop the slash and write a file named "new"
        export(str(tmp_path / "new") + "/")
    assert exit_info.value.code == 2 and "names a folder" in capsys.readouterr().err
    assert export(str(photo / "model.onnx")) == 2
    assert "victim.jpg is a file, not a folder" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*before, "models"])  # no temporary left

    assert export(str(photo), "--overwrite") == 0
    onnx.checker.check_model(onnx.load(str(photo)))
    assert weights.read_bytes() == before["copy.pt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*before, "models"])


def test_the_onnx_path_runs_without_pytorch(onnx_file, random_weights, astronaut_file):
    """With an exported model, importing msfer, detecting and recognising load no PyTorch (a process where importing
    torch fails), and give the faces the PyTorch backend gives."""
    program = f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("PyTorch is blocked in this test: " + name)
sys.meta_path.insert(0, NoTorch())
import json
import subprocess
import sys
from msfer import EmotionRecognizer
faces = EmotionRecognizer({str(onnx_file)!r}, tta=True).predict({str(astronaut_file)!r})
print(json.dumps([face.to_dict() for face in faces]))
"""
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    faces = json.loads(run.stdout)
    reference = EmotionRecognizer(random_weights, tta=True).predict(astronaut_file)
    assert len(faces) == len(reference) == 1
    assert faces[0]["box"] == reference[0].box and faces[0]["label"] == reference[0].label
    assert faces[0]["probs"] == pytest.approx(reference[0].probs, abs=1e-4)
