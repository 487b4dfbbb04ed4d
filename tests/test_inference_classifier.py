"""A plain classifier (`classifier_mobilenetv2`: no regions, its forward gives boxes B x 0 x 4) on every user-facing
path, as the region network: the API, `msfer predict` on photos, a folder and a video (JSON Lines, CSV, annotated
copies), `msfer report`, `msfer export` and the ONNX backend, the REST service, face quality, calibration and the
balanced decision rule, and `msfer evaluate`. Each face has the region network's fields, with `regions` empty.

The fixtures `classifier_weights`, `random_weights` (the region network), `recognizer` and `astronaut` are in
tests/conftest.py."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_inference_decision import expected_label, with_offsets
from test_inference_predict import moving_face_frames, write_video

from msfer.cli import main
from msfer.errors import MsferError
from msfer.inference.recognizer import EmotionRecognizer
from msfer.inference.results import CSV_FIELDS, FaceResult
from msfer.inference.visualize import draw_faces
from msfer.labels import EMOTIONS

FACE_FIELDS = {"box", "score", "landmarks", "regions", "probs", "label", "confidence", "decision",
               "face_size", "sharpness", "roll", "yaw", "quality", "quality_issues"}
QUALITY_FIELDS = ("face_size", "sharpness", "roll", "yaw", "quality", "quality_issues")


@pytest.fixture(scope="module")
def classifier(classifier_weights, recognizer) -> EmotionRecognizer:
    return EmotionRecognizer(classifier_weights, detector=recognizer.detector)


@pytest.fixture(scope="module")
def faces(classifier, recognizer, astronaut) -> tuple[FaceResult, FaceResult]:
    """The astronaut's face by the classifier and by the region network."""
    return classifier.predict(astronaut)[0], recognizer.predict(astronaut)[0]


@pytest.fixture(scope="module")
def offsets(faces) -> np.ndarray:
    """Balanced-rule offsets that move the astronaut's label to her least probable emotion."""
    probs = np.array([faces[0].probs[name] for name in EMOTIONS])
    values = np.zeros(len(EMOTIONS))
    values[int(probs.argmin())] = np.log(probs.max() / probs.min()) + 2.0
    return values - values.mean()


@pytest.fixture(scope="module")
def balanced_weights(classifier_weights, offsets, tmp_path_factory) -> Path:
    """The classifier with a calibration record and the balanced rule's offsets (as msfer bundle fits)."""
    return with_offsets(classifier_weights, tmp_path_factory.mktemp("classifier") / "balanced.pt", offsets)


@pytest.fixture(scope="module")
def balanced(balanced_weights, recognizer) -> EmotionRecognizer:
    return EmotionRecognizer(balanced_weights, decision="balanced", detector=recognizer.detector)


@pytest.fixture(scope="module")
def balanced_face(balanced, astronaut) -> FaceResult:
    return balanced.predict(astronaut)[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory, astronaut) -> dict[str, Path]:
    """A folder with the astronaut and a photo without a face, and a 3-frame video of her."""
    root = tmp_path_factory.mktemp("classifier_media")
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "astronaut.jpg", quality=95)
    Image.new("RGB", (64, 48), (90, 90, 90)).save(photos / "blank.png")
    video = root / "clip.avi"
    write_video(video, moving_face_frames(astronaut, 3))
    return {"photos": photos, "video": video}


def check_face(face: dict) -> None:
    """A face as JSON: the region network's fields, no regions, probabilities over the 7 emotions."""
    assert set(face) - {"track_id"} == FACE_FIELDS
    assert face["regions"] == {}
    assert list(face["probs"]) == list(EMOTIONS) and sum(face["probs"].values()) == pytest.approx(1, abs=1e-3)
    assert face["label"] in EMOTIONS


def test_api_faces_are_the_region_networks_without_regions(faces, classifier, astronaut):
    face, region_face = faces
    check_face(face.to_dict())
    assert set(region_face.regions) == {"face", "left_eye", "right_eye", "nose", "mouth"}
    assert set(face.to_dict()) == set(region_face.to_dict())
    # The same detector, crop and photo: where the face is and its quality do not depend on the classifier.
    assert (face.box, face.score, face.landmarks) == (region_face.box, region_face.score, region_face.landmarks)
    assert [getattr(face, name) for name in QUALITY_FIELDS] == [getattr(region_face, name) for name in QUALITY_FIELDS]
    assert face.label == max(face.probs, key=face.probs.get) and face.confidence == face.probs[face.label]
    cropped = classifier.classify_faces([astronaut[40:200, 160:290]])[0]
    check_face(cropped.to_dict())
    assert cropped.roll is None and cropped.box == [0.0, 0.0, 130.0, 160.0]


def test_the_annotated_image_has_the_face_box_and_no_organ_boxes(faces, astronaut):
    def drawn_inside(face: FaceResult) -> bool:
        """Whether any pixel strictly inside the face box (away from its lines and caption) was drawn on."""
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        inner = (slice(y1 + 4, y2 - 3), slice(x1 + 4, x2 - 3))
        return bool((draw_faces(astronaut, [face])[inner] != astronaut[inner]).any())

    classifier_face, region_face = faces
    assert not drawn_inside(classifier_face)
    assert drawn_inside(region_face)  # the region network's eyes, nose and mouth


def test_predict_a_folder_and_a_video(classifier_weights, media, tmp_path):
    out, vis = tmp_path / "results.jsonl", tmp_path / "vis"
    assert main(["predict", str(media["photos"]), str(media["video"]), "--weights", str(classifier_weights),
                 "--out", str(out), "--save-vis", str(vis), "--smooth"]) == 0
    records: dict[str, list[dict]] = {}
    for record in map(json.loads, out.read_text().splitlines()):
        records.setdefault(Path(record["source"]).name, []).append(record)
    assert [len(r["faces"]) for r in records["astronaut.jpg"]] == [1] and records["blank.png"][0]["faces"] == []
    assert [r["frame"] for r in records["clip.avi"]] == [0, 1, 2]
    assert [f["track_id"] for r in records["clip.avi"] for f in r["faces"]] == [1, 1, 1]
    for face in (f for rs in records.values() for r in rs for f in r["faces"]):
        check_face(face)
    assert np.asarray(Image.open(vis / "photos" / "astronaut.jpg.msfer.jpg")).shape == (512, 512, 3)
    capture = cv2.VideoCapture(str(vis / "clip.avi.msfer.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()


def test_decision_rule_and_calibration(balanced, balanced_face, classifier, offsets, astronaut):
    face, plain = balanced_face, balanced.predict(astronaut, decision="argmax")[0]
    assert face.probs == plain.probs and face.regions == {} and face.decision == "balanced"
    assert face.label == expected_label(face, offsets) != plain.label
    assert face.confidence == face.probs[face.label]
    assert balanced.calibration["method"] == "temperature" and classifier.calibration is None
    with pytest.raises(MsferError, match="no balanced decision rule"):
        classifier.predict(astronaut, decision="balanced")


def test_export_onnx_backend_and_csv(balanced_weights, balanced_face, offsets, media, recognizer, astronaut, tmp_path):
    pytest.importorskip("onnx")
    import onnx
    import onnxruntime

    exported = tmp_path / "classifier.onnx"
    assert main(["export", "--weights", str(balanced_weights), "--out", str(exported)]) == 0
    metadata = {prop.key: json.loads(prop.value) for prop in onnx.load(str(exported)).metadata_props}
    assert metadata["region_names"] == [] and np.allclose(metadata["balanced_offsets"], offsets, atol=1e-6)
    assert metadata["name"] == "balanced"  # the checkpoint's name, not the ONNX file's
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logits, boxes, box_scores = session.run(["logits", "boxes", "box_scores"],
                                            {"images": np.zeros((3, 3, 112, 112), np.float32)})
    assert logits.shape == (3, 7) and boxes.shape == (3, 0, 4) and box_scores.shape == (3, 0)

    torch_face = balanced_face
    onnx_recognizer = EmotionRecognizer(exported, backend="onnx", detector=recognizer.detector)
    assert onnx_recognizer.model_name == "balanced" and onnx_recognizer.classifier.kind == "onnx"
    onnx_face = onnx_recognizer.predict(astronaut)[0]
    assert onnx_face.regions == {} and onnx_face.probs == pytest.approx(torch_face.probs, abs=1e-4)

    table = tmp_path / "faces.csv"
    assert main(["predict", str(media["photos"]), "--weights", str(exported), "--backend", "onnx",
                 "--decision", "balanced", "--out", str(table)]) == 0
    rows = {Path(row["source"]).name: row for row in csv.DictReader(table.open())}
    assert list(rows["astronaut.jpg"]) == CSV_FIELDS  # the region network's columns (neither has region columns)
    row = rows["astronaut.jpg"]
    assert row["decision"] == "balanced" and row["label"] == torch_face.label
    assert {name: float(row[name]) for name in EMOTIONS} == pytest.approx(torch_face.probs, abs=1e-4)
    assert rows["blank.png"]["label"] == ""


def test_service_answers_with_empty_regions(balanced, offsets, astronaut):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import io

    from fastapi.testclient import TestClient

    from msfer.inference.service import create_app

    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "JPEG", quality=90)
    client = TestClient(create_app(balanced))
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["balanced_decision"] is True
    assert health["model"] == "balanced"  # unnamed by a bundle: its file's stem
    assert health["backend"] == "torch"  # as --backend names it
    assert health["calibration"]["method"] == "temperature"
    answer = client.post("/v1/predict?decision=balanced", files={"image": ("a.jpg", buffer.getvalue(), "image/jpeg")})
    assert answer.status_code == 200
    result = answer.json()
    assert (result["width"], result["height"], result["decision"]) == (512, 512, "balanced")
    [face] = result["faces"]
    check_face(face)
    probs = np.array([face["probs"][name] for name in EMOTIONS])
    assert face["label"] == EMOTIONS[int(np.argmax(np.log(probs) + offsets))] and face["quality"] == "good"


def test_report(classifier_weights, media, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(media["video"]), "--out", str(out), "--weights", str(classifier_weights)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == 2 and '<img src="timeline_1.png"' in page  # the header and the one tracked face
    frames = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert len(frames) == 3 and all(face["regions"] == {} for frame in frames for face in frame["faces"])


def test_evaluate(classifier_weights, astronaut, tmp_path, capsys):
    crops = tmp_path / "crops"
    for label, pixels in (("happy", astronaut[40:200, 160:290]), ("sad", astronaut[40:200, 290:160:-1])):
        (crops / label).mkdir(parents=True)
        Image.fromarray(np.ascontiguousarray(pixels)).save(crops / label / "face.jpg", quality=95)
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("")
    common = ["evaluate", "--weights", str(classifier_weights), "--format", "folder", "--data", str(crops),
              "--annotations", str(annotations), "--num-workers", "0"]
    assert main([*common, "--out", str(tmp_path / "eval"), "--tta"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 2 and 0 <= metrics["overall_accuracy"] <= 1 and metrics["fallback_rate"] == 0.0
    assert metrics["region_source"] is None and "region_detection" not in metrics  # no regions to score
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "pseudo"), "--region-source", "pseudo"]) == 2
    error = capsys.readouterr().err
    assert str(classifier_weights) in error and "uses no face regions" in error


def test_only_a_plain_classifier_is_refused_pseudo_regions(random_weights, classifier_weights):
    """A region network saved with just its registered name (no region_source key) keeps --region-source pseudo."""
    from msfer.engine.evaluate import check_has_regions
    from msfer.errors import MsferError

    check_has_regions(random_weights)
    with pytest.raises(MsferError, match="uses no face regions"):
        check_has_regions(classifier_weights)
