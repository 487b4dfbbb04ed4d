"""Model files that lie about themselves are refused at load, by every command alike, with one error naming the
file: an ONNX graph whose outputs or input differ from its metadata, a checkpoint of other classes. An .onnx file
picks the ONNX backend itself."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msfer.cli import main
from msfer.labels import EMOTIONS

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, random_weights) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--out", str(out), "--weights", str(random_weights)]) == 0
    return out


def with_logit_columns(source: Path, out: Path, columns: int) -> Path:
    """``source`` with its ``logits`` mapped to ``columns`` columns by one more MatMul; the metadata still says 7."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits_7" if name == "logits" else name for name in node.output]
    weight = np.eye(len(EMOTIONS), columns, dtype=np.float32)
    graph.initializer.append(numpy_helper.from_array(weight, "to_columns"))
    graph.node.append(helper.make_node("MatMul", ["logits_7", "to_columns"], ["logits"]))
    output = next(o for o in graph.output if o.name == "logits")
    output.type.tensor_type.shape.dim[1].dim_value = columns
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def with_metadata(source: Path, out: Path, **changes) -> Path:
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = json.dumps(changes[prop.key])
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("make, needle", [
    (lambda src, out: with_logit_columns(src, out, 5), "its output 'logits' is batch x 5, not N x 7"),
    (lambda src, out: with_logit_columns(src, out, 9), "its output 'logits' is batch x 9, not N x 7"),
    (lambda src, out: with_metadata(src, out, input_size=96), "its input is tensor(float) batch x 3 x 112 x 112, "
                                                             "but its metadata says float N x 3 x 96 x 96"),
], ids=["5 columns", "9 columns", "wrong input size"])
def test_an_onnx_file_that_lies_about_itself_is_refused_at_load(exported, make, needle, astronaut_file, tmp_path,
                                                                capsys):
    lying = make(exported, tmp_path / "lying.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (photos / name).write_bytes(astronaut_file.read_bytes())
    out = tmp_path / "results.jsonl"
    assert main(["predict", str(photos), "--weights", str(lying), "--backend", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{lying} is not a model msfer can run: {needle}" in err, err
    assert not out.exists()  # nothing was written: one error at load, not one per image


def test_an_onnx_file_picks_its_backend(exported, astronaut_file, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    assert main(["predict", str(astronaut_file), "--weights", str(exported), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert len(record["faces"]) == 1 and list(record["faces"][0]["probs"]) == list(EMOTIONS)
    assert main(["predict", str(astronaut_file), "--weights", str(exported), "--backend", "torch"]) == 2
    assert "is an ONNX model, which runs in ONNX Runtime, not PyTorch: drop --backend torch" in capsys.readouterr().err
    assert main(["predict", str(astronaut_file), "--weights", str(exported), "--device", "cuda"]) == 2
    assert f"{exported}, an ONNX model, runs on the CPU (ONNX Runtime): drop --device cuda" in capsys.readouterr().err


def test_every_command_refuses_a_checkpoint_of_other_classes(random_weights, astronaut, tmp_path, capsys):
    from msfer.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(random_weights)
    checkpoint["classes"] = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt"][1:]
    other = save_checkpoint(checkpoint, tmp_path / "other.pt")
    root = tmp_path / "photos" / "happy"
    root.mkdir(parents=True)
    Image.fromarray(astronaut).save(root / "astronaut.jpg", quality=95)
    photo = root / "astronaut.jpg"
    commands = {
        "evaluate": ["evaluate", "--data", str(root.parent), "--format", "folder", "--out", str(tmp_path / "eval"),
                     "--device", "cpu", "--num-workers", "0"],
        "evaluate --detect-faces": ["evaluate", "--data", str(root.parent), "--format", "folder", "--detect-faces",
                                    "--out", str(tmp_path / "eval_photos"), "--device", "cpu"],
        "predict": ["predict", str(photo)],
        "export": ["export", "--out", str(tmp_path / "other.onnx")],
    }
    for name, command in commands.items():
        assert main([*command, "--weights", str(other)]) == 2, name
        err = capsys.readouterr().err
        assert f"{other} predicts classes ['disgust'" in err and "not msfer's ['angry'" in err, (name, err)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "other.onnx").exists()
