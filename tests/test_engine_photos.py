"""The one detect -> crop -> classify loop (msfer.engine.photos): the engine's photo validation and the
inference API's whole-pipeline evaluation give the same probabilities and metrics."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from msfer.data.samples import Sample
from msfer.engine.photos import PhotoValidation, photo_metrics
from msfer.faces.crop import CropRule
from msfer.labels import EMOTIONS
from msfer.model import build_model
from msfer.model.checkpoint import describe, load_model, save_checkpoint

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
    # no balanced rule in the model (offsets all 0): one rule reported, as msfer evaluate does on crops;
    # offsets given (even zeros, as bundling passes them) report both, like split_metrics
    assert "decision_rules" not in metrics
    rules = photo_metrics(photos, inference, np.zeros(len(EMOTIONS)))["decision_rules"]
    headline = {key: metrics[key] for key in ("overall_accuracy", "mean_class_accuracy")}
    assert rules == {"argmax": headline, "balanced": headline}


# Run by torchrun in each of two gloo processes: the same random network on every rank, scored on the photos.
SHARDED = """
import json, sys
import torch
from msfer.data.samples import Sample
from msfer.engine.distributed import cleanup_distributed, init_distributed
from msfer.engine.photos import PhotoValidation
from msfer.model import build_model
from msfer.faces.crop import CropRule

photos, out = json.loads(sys.argv[1]), sys.argv[2]
info = init_distributed("cpu")
torch.manual_seed(0)
model = build_model({"name": "classifier_mobilenetv2", "pretrained": False, "input_size": 32})
samples = [Sample(sample_id, label, "val", path=path) for sample_id, label, path in photos]
validation = PhotoValidation(samples, CropRule("box", 1.2), model.input_size, info=info)
metrics = validation.score(model, torch.device("cpu"))
mine = {"ids": [samples[k].id for k in validation.indices], "crops": len(validation.crops()), "metrics": metrics}
with open(f"{out}/rank{info.rank}.json", "w") as handle:
    json.dump(mine, handle, default=float)
cleanup_distributed()
"""


def test_two_ranks_share_the_photos_and_both_get_the_whole_sets_metrics(photos, tmp_path):
    # Each rank detects and classifies only its share (as the FER2013 validation is sharded), and the
    # gathered metrics are, on both ranks, those of one process scoring every photo.
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    listed = json.dumps([[sample.id, sample.label, str(sample.path)] for sample in photos])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               listed, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["ids"] == ["happy/astronaut.png", "fear/coffee.png"] and ranks[0]["crops"] == 2
    assert ranks[1]["ids"] == ["sad/turned.png"] and ranks[1]["crops"] == 1

    torch.manual_seed(0)
    model = build_model({"name": "classifier_mobilenetv2", "pretrained": False, "input_size": 32})
    alone = json.loads(json.dumps(PhotoValidation(photos, CropRule("box", 1.2), model.input_size).score(
        model, torch.device("cpu")), default=float))
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    gathered = ranks[0]["metrics"]
    assert gathered["n"] == 3 and gathered["detection"]["missed_ids"] == ["fear/coffee.png"]
    for key in ("overall_accuracy", "mean_class_accuracy", "confusion_matrix", "per_class", "detection"):
        assert gathered[key] == alone[key], key
    for key in ("n", "ece", "nll", "brier", "mean_confidence", "accuracy"):
        assert gathered["calibration"][key] == pytest.approx(alone["calibration"][key], rel=1e-5), key
