"""The one detect -> crop -> classify loop (msfer.engine.photos): the engine's photo validation and the
inference API's whole-pipeline evaluation give the same probabilities and metrics."""
import numpy as np
import pytest
import torch
from PIL import Image

from msfer.data.samples import Sample
from msfer.engine.checkpoint import describe, load_model, save_checkpoint
from msfer.engine.photos import PhotoValidation, photo_metrics
from msfer.labels import EMOTIONS
from msfer.model import build_model
from msfer.regions.crop import CropRule

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(astronaut, tmp_path_factory) -> list[Sample]:
    """The astronaut as she is, turned 20 degrees, and a photo without a face."""
    folder = tmp_path_factory.mktemp("photos")
    images = {"happy/astronaut.png": astronaut,
              "sad/turned.png": np.asarray(Image.fromarray(astronaut).rotate(20, center=(225, 115))),
              "fear/coffee.png": skimage_data.coffee()}
    samples = []
    for name, pixels in images.items():
        path = folder / name.replace("/", "_")
        Image.fromarray(pixels).save(path)
        samples.append(Sample(name, EMOTIONS.index(name.split("/")[0]), "val", path=path))
    return samples


@pytest.mark.parametrize("method", ["box", "similarity"])
def test_engine_and_inference_paths_give_identical_probabilities(random_weights, recognizer, photos, tmp_path,
                                                                 method):
    from msfer import EmotionRecognizer
    from msfer.inference.detect_eval import evaluate_with_detection, probs_with_detection

    weights = random_weights
    if method != "box":  # the same weights, trained (say) with another crop rule
        model = build_model({"name": "msfer_mobilenetv2", "pretrained": False})
        weights = tmp_path / "model.pt"
        config = {"model": {"name": "msfer_mobilenetv2", "pretrained": False},
                  "data": {"crop_rule": {"method": method, "scale": 1.2}}}
        save_checkpoint({"model": torch.load(random_weights, weights_only=True)["model"],
                         **describe(model, config)}, weights)
    model, meta = load_model(weights)
    rule = CropRule.from_dict(meta["crop_rule"])
    engine = PhotoValidation(photos, rule, model.input_size, detector=recognizer.detector).probabilities(
        model, torch.device("cpu"))
    api = EmotionRecognizer(weights, detector=recognizer.detector)
    assert api.crop_rule == rule
    inference = probs_with_detection(api, photos)
    assert np.isnan(engine[2]).all() and np.isnan(inference[2]).all()  # the coffee has no face
    assert np.allclose(engine[:2], inference[:2], atol=1e-6, rtol=0)
    # the predicted API's per-face probabilities are the loop's too
    assert list(api.predict(photos[0].path)[0].probs.values()) == pytest.approx(inference[0].tolist(), abs=1e-5)
    metrics = evaluate_with_detection(api, photos)
    assert metrics == photo_metrics(photos, inference)
    assert metrics["detection"]["missed_ids"] == ["fear/coffee.png"] and metrics["n"] == 3
