"""Detection geometry: degenerate shapes, faces cut by the edge, batch independence, small faces in large photos."""
from __future__ import annotations

import copy
import json
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from msfer import EmotionRecognizer
from msfer.cli import main
from msfer.faces.detection import detection_scales
from msfer.inference.predict import collect_inputs, predict_images
from msfer.inference.results import ResultWriter
from msfer.regions.annotations import load_annotations

# width x height: far longer than wide, in both directions; shrunk for detection, a side used to round to 0 px.
DEGENERATE = [(1600, 1), (3000, 2), (1, 5000), (2, 1300)]


def degenerate_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"thin_{w}x{h}.png": rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in DEGENERATE}


def read_jsonl(path: Path) -> dict[str, dict]:
    return {Path(r["source"]).name: r for r in map(json.loads, path.read_text().splitlines())}


def test_degenerate_shapes_pass_detection_in_the_api(recognizer):
    for name, image in degenerate_images().items():
        assert recognizer.predict(image) == [], name
        assert recognizer.predict(image[..., 0]) == [], name  # grey
    thin_and_normal = [*degenerate_images().values(), np.zeros((480, 640, 3), np.uint8)]
    assert recognizer.predict_batch(thin_and_normal) == [[]] * len(thin_and_normal)


def test_degenerate_shapes_do_not_stop_a_predict_batch(random_weights, astronaut, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "a_astronaut.jpg", quality=95)
    for name, image in degenerate_images().items():
        Image.fromarray(image).save(photos / name)
    Image.fromarray(astronaut).save(photos / "z_astronaut.png")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(photos), "--weights", str(random_weights), "--out", str(out), "--batch-size", "8"]) == 0
    records = read_jsonl(out)
    assert len(records["a_astronaut.jpg"]["faces"]) == 1 and len(records["z_astronaut.png"]["faces"]) == 1
    for name in degenerate_images():
        assert records[name]["faces"] == [] and "error" not in records[name], name


def test_degenerate_shapes_do_not_stop_annotate(astronaut, tmp_path):
    data = tmp_path / "data" / "happy"
    data.mkdir(parents=True)
    for name, image in degenerate_images().items():
        Image.fromarray(image).save(data / name)
    Image.fromarray(astronaut[20:260, 120:340]).save(data / "face.png")
    out = tmp_path / "ann.jsonl"
    assert main(["annotate", str(tmp_path / "data"), "--format", "folder", "--out", str(out), "--batch-size", "8"]) == 0
    records = load_annotations(out)
    assert records["happy/face.png"]["status"] == "ok"
    for name in degenerate_images():
        assert records[f"happy/{name}"]["status"] == "no_face", name


def test_face_boxes_are_clipped_to_the_image(recognizer, astronaut):
    cut = np.ascontiguousarray(astronaut[100:, 215:])  # the face runs off the top-left corner
    raw = recognizer.detect([cut])[0][0].box
    assert raw[0] < 0 and raw[1] < 0  # RetinaFace's box extends past the image
    (face,) = recognizer.predict(cut)
    height, width = cut.shape[:2]
    x1, y1, x2, y2 = face.box
    assert x1 == 0 and y1 == 0 and x2 == pytest.approx(raw[2], abs=0.1) and y2 <= height and x2 <= width
    for region in face.regions.values():
        assert 0 <= region[0] <= region[2] <= width and 0 <= region[1] <= region[3] <= height


def mixed_size_photos(astronaut: np.ndarray) -> dict[str, np.ndarray]:
    """Photos of different sizes from the sample: alone, cropped, padded, shrunk, doubled, and large (two passes)."""
    padded = np.full((620, 900, 3), 40, np.uint8)
    padded[60:572, 300:812] = astronaut
    return {
        "a.png": astronaut,
        "b.png": np.ascontiguousarray(astronaut[20:300, 100:420]),
        "c.png": padded,
        "d.png": cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA),
        "e.png": np.hstack([astronaut, cv2.resize(astronaut, (384, 512))]),
        "f.png": cv2.resize(padded, (1800, 1240)),
        "g.png": astronaut[::-1].copy(),
    }


def test_results_do_not_depend_on_the_batch(recognizer, astronaut, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, image in mixed_size_photos(astronaut).items():
        Image.fromarray(image).save(photos / name)
    items = collect_inputs([photos]).items
    runs = {}
    for batch_size in (1, 2, 5):  # what `msfer predict --batch-size N` runs, with the model loaded once
        out = tmp_path / f"batch{batch_size}.jsonl"
        batched = copy.copy(recognizer)
        batched.batch_size = batch_size
        with ExitStack() as stack:
            predict_images(batched, items, ResultWriter(out, stack), None, problems := [])
        assert problems == []
        runs[batch_size] = read_jsonl(out)
    reference = runs[1]
    assert sum(len(record["faces"]) for record in reference.values()) >= 7
    for batch_size in (2, 5):
        assert runs[batch_size].keys() == reference.keys()
        for name, record in runs[batch_size].items():
            faces, expected = record["faces"], reference[name]["faces"]
            assert len(faces) == len(expected), (batch_size, name)
            for face, alone in zip(faces, expected):
                np.testing.assert_allclose(face["box"], alone["box"], atol=1e-5, err_msg=f"{batch_size} {name}")
                np.testing.assert_allclose(face["landmarks"], alone["landmarks"], atol=1e-5)
                np.testing.assert_allclose(list(face["probs"].values()), list(alone["probs"].values()), atol=1e-5)
                assert face["label"] == alone["label"]


def test_api_batch_equals_each_image_alone(recognizer, astronaut):
    photos = list(mixed_size_photos(astronaut).values())
    together = recognizer.predict_batch(photos)
    for photo, faces in zip(photos, together):
        alone = recognizer.predict(photo)
        assert [f.box for f in faces] == [f.box for f in alone]
        for face, single in zip(faces, alone):
            assert face.probs == pytest.approx(single.probs, abs=1e-5)


def test_detection_scales():
    assert detection_scales(480, 640, 640, 40) == [1.0]  # ordinary photos and video: one pass, as before
    assert detection_scales(720, 1280, 640, 40) == [0.5]
    assert detection_scales(1080, 1920, 640, 40) == [0.5]  # the finer pass alone still sees a full-frame face
    assert detection_scales(2600, 4000, 640, 40) == [0.5, 0.16]  # small faces and large ones
    assert detection_scales(2600, 4000, 640, None) == [0.16]
    assert detection_scales(2600, 4000, 640, 80) == [0.25, 0.16]
    fine, coarse = detection_scales(6000, 8000, 640, 40)  # 48 MP: the fine pass is capped at 6 MP
    assert fine == pytest.approx((6e6 / 48e6) ** 0.5) and coarse == 0.08
    assert detection_scales(5000, 1, 640, 40) == [0.5]


def group_photo(astronaut: np.ndarray, faces: int, face_px: int, width: int, height: int) -> np.ndarray:
    """``faces`` copies of the sample face (its box ``face_px`` wide) on a grid over a textured background."""
    patch = astronaut[20:230, 140:310]  # the face (box about 95 px wide) with a margin
    scale = face_px / 95
    small = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (height // 8, width // 8, 3)).astype(np.float32), (0, 0), 3)
    photo = np.clip(cv2.resize(noise, (width, height)) * 400 + 120, 0, 255).astype(np.uint8)
    columns = 8
    rows = -(-faces // columns)
    for k in range(faces):
        x = int((k % columns + 0.5) * width / columns - small.shape[1] / 2)
        y = int((k // columns + 0.5) * height / rows - small.shape[0] / 2)
        photo[y : y + small.shape[0], x : x + small.shape[1]] = small
    return photo


@pytest.mark.slow
def test_small_faces_in_a_large_photo_are_found_by_default(random_weights, recognizer, astronaut):
    photo = group_photo(astronaut, faces=40, face_px=60, width=4000, height=2600)
    found = recognizer.predict(photo)
    assert 36 <= len(found) <= 40
    cells = {(int((f.box[1] + f.box[3]) / 2 // 520), int((f.box[0] + f.box[2]) / 2 // 500)) for f in found}
    assert len(cells) == len(found)  # one detection per face (5 rows x 8 columns), none twice
    assert all(40 <= f.box[2] - f.box[0] <= 90 for f in found)
    coarse_only = EmotionRecognizer(random_weights, detector=recognizer.detector, min_face=None)
    assert len(coarse_only.predict(photo)) < 5  # what the single 640 px pass found before


class FailingOnWidth:
    """The real detector, except that it raises on images of one width (a stand-in for any fault inside detection)."""

    def __init__(self, detector, width: int) -> None:
        self.detector, self.width, self.nms_threshold = detector, width, detector.nms_threshold

    def detect(self, images):
        if any(image.shape[1] == self.width for image in images):
            raise RuntimeError("detector failure")
        return self.detector.detect(images)


def test_an_image_that_breaks_detection_costs_only_its_own_record(recognizer, astronaut, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "a.png")
    Image.fromarray(np.zeros((40, 77, 3), np.uint8)).save(photos / "b_breaks.png")
    Image.fromarray(astronaut).save(photos / "c.png")
    failing = copy.copy(recognizer)
    failing.detector = FailingOnWidth(recognizer.detector, 77)
    out = tmp_path / "out.jsonl"
    with ExitStack() as stack:
        predict_images(failing, collect_inputs([photos]).items, ResultWriter(out, stack), None, problems := [])
    records = read_jsonl(out)
    assert len(records["a.png"]["faces"]) == 1 and len(records["c.png"]["faces"]) == 1
    assert "b_breaks.png" in records["b_breaks.png"]["error"] and "RuntimeError" in records["b_breaks.png"]["error"]
    assert len(problems) == 1


def test_annotate_writes_an_image_that_breaks_detection_as_unreadable(astronaut):
    from msfer.data.samples import Sample
    from msfer.faces.retinaface import RetinaFaceDetector
    from msfer.regions.annotator import Annotator

    face = np.ascontiguousarray(astronaut[20:260, 120:340])
    images = [face, np.zeros((40, 77, 3), np.uint8), face]
    samples = [Sample(f"happy/{k}.png", 3, "train") for k in range(3)]
    # Enlarged or shrunk to 128 px before detection, a 77 px-wide image is 128 px wide there.
    records = Annotator(FailingOnWidth(RetinaFaceDetector(), 128)).annotate(samples, images)
    assert [record["status"] for record in records] == ["ok", "unreadable", "ok"]


def test_bad_detection_options_are_usage_errors(random_weights, tmp_path, capsys):
    photo = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(photo)
    assert main(["predict", str(photo), "--weights", str(random_weights), "--min-face", "-1"]) == 2
    assert "min_face" in capsys.readouterr().err
