"""One preprocessing path: a face crop gives the same input tensor and probabilities on every path that classifies it.

Training's validation (``msfer train --test-only``, the code every epoch validates with),
``msfer evaluate``, the Python API with the PyTorch and the ONNX backend, ``msfer predict``
and the REST service all resize, normalise and mirror with :mod:`msfer.data.transforms`.
The network's inputs are recorded where they enter it (a forward hook on the emotion model;
for ONNX Runtime, a wrapper that passes every batch on), never replaced.
"""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from msfer.cli import main
from msfer.data.images import load_rgb
from msfer.data.transforms import (
    class_probabilities,
    class_probabilities_array,
    mirror,
    model_input,
    model_input_array,
    normalize,
    resize_square,
)
from msfer.labels import EMOTIONS
from msfer.model.checkpoint import load_model
from msfer.model.emotionnet import EmotionModel

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_resize_is_pillows_bilinear_and_normalisation_is_per_channel():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    resized = resize_square(image, 32)
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    assert np.array_equal(resized, np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR)))
    assert np.array_equal(resize_square(Image.fromarray(image).convert("L"), 32)[..., 0],
                          np.asarray(Image.fromarray(image).convert("L").resize((32, 32), Image.BILINEAR)))
    assert resize_square(resized, 32) is resized  # already that size: untouched
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        resize_square(image.astype(np.float32), 32)

    batch = np.stack([resized, resized[::-1]])
    tensor = model_input(batch, MEAN, STD)
    assert tensor.shape == (2, 3, 32, 32) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    expected = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(tensor, expected)
    assert torch.equal(tensor, model_input(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(), MEAN, STD))
    assert torch.equal(tensor, normalize(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255, MEAN, STD))
    assert torch.equal(mirror(tensor), tensor.flip(-1))
    logits = torch.randn(2, 7)
    assert torch.equal(class_probabilities(logits), logits.softmax(dim=1))
    torch.testing.assert_close(class_probabilities(logits, -logits),
                               (logits.softmax(dim=1) + (-logits).softmax(dim=1)) / 2)
    # the numpy twins of the ONNX backend: the same values within float32 rounding
    array = model_input_array(batch, MEAN, STD)
    assert array.dtype == np.float32 and array.flags.c_contiguous
    np.testing.assert_allclose(array, tensor.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(class_probabilities_array(logits.numpy(), -logits.numpy()),
                               class_probabilities(logits, -logits).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(class_probabilities_array(100 * logits.numpy()),  # large logits: no overflow
                               class_probabilities(100 * logits).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="N x S x S x 3 uint8"):
        model_input_array(batch.astype(np.float32), MEAN, STD)


@pytest.fixture(scope="module")
def crops(tmp_path_factory, astronaut):
    """A folder dataset (split "val") of three crops of the astronaut's face: FER2013-like 48 px grey (enlarged
    to the input), a colour crop larger than the input (shrunk), and a non-square one (squashed)."""
    root = tmp_path_factory.mktemp("crops")
    face = astronaut[20:220, 150:330]
    images = {"val/happy/grey48.png": Image.fromarray(face).convert("L").resize((48, 48), Image.BILINEAR),
              "val/neutral/colour180.png": Image.fromarray(face[:180, :180]),
              "val/sad/wide.png": Image.fromarray(face[40:140, :])}
    records = []
    for name, image in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
        label = EMOTIONS.index(name.split("/")[1])
        records.append({"id": name, "split": "val", "label": label, "width": image.width, "height": image.height,
                        "status": "no_face", "regions": {}, "landmarks": None, "score": None})
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, sorted(images)


class Inputs:
    """Every (input, logits) pair the emotion network is called with, recorded by a global forward hook."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self):
        def record(module, args, output):
            if isinstance(module, EmotionModel):
                self.calls.append((args[0].detach().clone(), output["logits"].detach().float().clone()))

        self.handle = torch.nn.modules.module.register_module_forward_hook(record)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


class RecordingSession:
    """Passes every run on to an ONNX Runtime session and keeps a copy of its input batch and of the logits."""

    def __init__(self, session) -> None:
        self.session, self.calls = session, []

    def run(self, names, feeds):
        outputs = self.session.run(names, feeds)
        (batch,) = feeds.values()
        self.calls.append((torch.from_numpy(batch.copy()), torch.from_numpy(np.asarray(outputs[0], np.float32))))
        return outputs


@pytest.mark.slow
def test_one_crop_gives_the_same_tensor_and_probabilities_on_every_path(crops, random_weights, tmp_path):
    from msfer import EmotionRecognizer

    root, names = crops
    model, _ = load_model(random_weights)
    size = model.input_size
    reference = model_input(np.stack([resize_square(load_rgb(root / name), size) for name in names]),
                            model.mean, model.std)

    runs = {}
    with Inputs() as runs["training validation"]:
        assert main(["train", "--resume", str(random_weights), "--test-only", "--output-dir", str(tmp_path / "run"),
                     f"data.root={root}", "data.format=folder", "data.val_split=val", "data.num_workers=0",
                     f"data.annotations={root / 'regions.jsonl'}", "data.image_size=48", "eval.tta=true",
                     "train.device=cpu"]) == 0
    with Inputs() as runs["msfer evaluate"]:
        assert main(["evaluate", "--weights", str(random_weights), "--data", str(root), "--format", "folder",
                     "--split", "val", "--out", str(tmp_path / "eval"), "--tta", "--num-workers", "0",
                     "--device", "cpu"]) == 0
    with Inputs() as runs["API (torch)"]:
        api = EmotionRecognizer(random_weights, tta=True).classify_faces([root / name for name in names])
    pytest.importorskip("onnx")
    onnx = EmotionRecognizer(random_weights, backend="onnx", tta=True)
    onnx.classifier.session = RecordingSession(onnx.classifier.session)
    onnx_faces = onnx.classify_faces([root / name for name in names])
    runs["API (ONNX)"] = onnx.classifier.session

    for path, recorded in runs.items():
        (image_input, logits), (mirror_input, mirror_logits) = recorded.calls
        if path == "API (ONNX)":  # normalised in numpy (no PyTorch on that path): equal within float32 rounding
            torch.testing.assert_close(image_input, reference, atol=1e-6, rtol=0)
            torch.testing.assert_close(mirror_input, reference.flip(-1), atol=1e-6, rtol=0)
        else:
            assert torch.equal(image_input, reference), path
            assert torch.equal(mirror_input, reference.flip(-1)), path
        runs[path] = class_probabilities(logits, mirror_logits)
    # The PyTorch paths run the same network on the same tensors: the same probabilities, bit for bit.
    assert torch.equal(runs["training validation"], runs["msfer evaluate"])
    assert torch.equal(runs["training validation"], runs["API (torch)"])
    torch.testing.assert_close(runs["API (ONNX)"], runs["API (torch)"], atol=1e-5, rtol=0)
    for faces in (api, onnx_faces):
        reported = torch.tensor([[face.probs[name] for name in EMOTIONS] for face in faces])
        torch.testing.assert_close(reported, runs["API (torch)"], atol=1e-5, rtol=0)  # rounded to 5 digits


@pytest.mark.slow
def test_detected_faces_go_through_the_same_transform_in_predict_and_the_service(random_weights, astronaut,
                                                                                 tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from msfer import EmotionRecognizer
    from msfer.inference.service import create_app

    recognizer = EmotionRecognizer(random_weights)
    face = recognizer.detect([astronaut])[0][0]
    crop, _ = recognizer.crop_face(astronaut, face)  # the native crop, resized by resize_square
    reference = model_input(crop[None], recognizer.spec.mean, recognizer.spec.std)

    photo = tmp_path / "astronaut.png"  # lossless: every path decodes the same pixels
    Image.fromarray(astronaut).save(photo)
    with Inputs() as predicted:
        assert main(["predict", str(photo), "--weights", str(random_weights), "--device", "cpu",
                     "--out", str(tmp_path / "faces.jsonl")]) == 0
    with Inputs() as served, TestClient(create_app(recognizer)) as client:
        buffer = io.BytesIO()
        Image.fromarray(astronaut).save(buffer, format="PNG")
        response = client.post("/v1/predict", files={"image": ("astronaut.png", buffer.getvalue(), "image/png")})
        assert response.status_code == 200
    for recorded in (predicted, served):
        (image_input, logits), = recorded.calls
        assert torch.equal(image_input, reference)
        probs = class_probabilities(logits)[0]
        assert max(probs.tolist()) == pytest.approx(response.json()["faces"][0]["confidence"], abs=1e-5)
