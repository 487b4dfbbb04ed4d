"""A model carries its crop rule: checkpoint, ONNX export and EmotionRecognizer agree on it."""
import numpy as np
import pytest
import torch

from msfer import EmotionRecognizer
from msfer.faces.crop import CropRule, crop_face
from msfer.model import build_model
from msfer.model.checkpoint import crop_rule, describe, load_model, save_checkpoint

CONFIG = {"name": "msfer_mobilenetv2", "pretrained": False}


@pytest.fixture(scope="module")
def similarity_weights(random_weights, tmp_path_factory):
    """The random model of conftest, saved as a run whose config asks for similarity crops at scale 1.3."""
    checkpoint = torch.load(random_weights, weights_only=True)
    model = build_model(CONFIG)
    path = tmp_path_factory.mktemp("crop_rule") / "similarity.pt"
    config = {"model": CONFIG, "data": {"crop_rule": {"method": "similarity", "scale": 1.3}}}
    save_checkpoint({"model": checkpoint["model"], **describe(model, config)}, path)
    return path


def test_the_checkpoint_round_trips_the_rule(similarity_weights, random_weights, tmp_path):
    _, meta = load_model(similarity_weights)
    assert meta["crop_rule"] == {"method": "similarity", "scale": 1.3}
    assert crop_rule(meta) == CropRule("similarity", 1.3)
    # a checkpoint written before the rule existed reads as today's default
    old = torch.load(random_weights, weights_only=True)
    old.pop("crop_rule")
    save_checkpoint(old, tmp_path / "old.pt")
    assert crop_rule(load_model(tmp_path / "old.pt")[1]) == CropRule("box", 1.0)
    assert EmotionRecognizer(tmp_path / "old.pt", detector=object()).crop_rule == CropRule("box", 1.0)


def test_the_recognizer_crops_by_the_models_rule_unless_told_otherwise(similarity_weights, recognizer, astronaut):
    detector = recognizer.detector
    by_model = EmotionRecognizer(similarity_weights, detector=detector)
    assert by_model.crop_rule == CropRule("similarity", 1.3) and by_model.align and by_model.crop_scale == 1.3
    face = by_model.detect([astronaut])[0][0]
    crop, transform = by_model.crop_face(astronaut, face)
    expected, expected_transform = crop_face(astronaut, face.box, face.landmarks, CropRule("similarity", 1.3), 112)
    assert np.array_equal(crop, expected) and np.allclose(transform, expected_transform)
    # the predicted probabilities are those of that crop
    probs = by_model.predict(astronaut)[0].probs
    assert list(probs.values()) == pytest.approx(by_model.classify_crops([expected])[0][0].tolist(), abs=1e-5)
    # the old arguments still override: align picks box or roll, crop_scale the scale
    assert EmotionRecognizer(similarity_weights, detector=detector, align=False).crop_rule == CropRule("box", 1.3)
    assert EmotionRecognizer(similarity_weights, detector=detector, align=True,
                             crop_scale=0.9).crop_rule == CropRule("roll", 0.9)
    assert EmotionRecognizer(similarity_weights, detector=detector, crop_rule="box").crop_rule == CropRule("box", 1.3)
    assert EmotionRecognizer(similarity_weights, detector=detector,
                             crop_rule={"method": "roll", "scale": 1.1}).crop_rule == CropRule("roll", 1.1)
    assert recognizer.crop_rule == CropRule("box", 1.0) and not recognizer.align and recognizer.crop_scale == 1.0


def test_the_onnx_export_carries_the_rule(similarity_weights, tmp_path):
    pytest.importorskip("onnx")
    from msfer.inference.backends import OnnxBackend
    from msfer.inference.export import export_onnx

    path = export_onnx(similarity_weights, tmp_path / "model.onnx")
    assert OnnxBackend(path, str(path)).crop_rule == CropRule("similarity", 1.3)
    assert EmotionRecognizer(path, backend="onnx", detector=object()).crop_rule == CropRule("similarity", 1.3)
