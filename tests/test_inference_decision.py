"""The decision rule: `--decision balanced` changes labels and never probabilities, through the API,
`msfer predict`, the REST service and `msfer evaluate --detect-faces`, with PyTorch and ONNX Runtime alike; a model
without the balanced rule's offsets is a clear error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msfer.cli import main
from msfer.engine.calibration import calibrated_checkpoint
from msfer.errors import MsferError
from msfer.inference.recognizer import EmotionRecognizer
from msfer.labels import EMOTIONS
from msfer.model.checkpoint import load_checkpoint, save_checkpoint

CALIBRATION_RECORD = {
    "method": "temperature",
    "held_out": {"calibrated": {"n": 1794, "ece": 0.031, "nll": 0.91, "brier": 0.44}},
}


def with_offsets(random_weights: Path, out: Path, offsets) -> Path:
    """``random_weights`` with the balanced rule's ``offsets`` (identity calibration: probabilities unchanged)."""
    checkpoint = calibrated_checkpoint(
        load_checkpoint(random_weights), [1.0] * 7, [0.0] * 7, list(offsets), CALIBRATION_RECORD
    )
    return save_checkpoint(checkpoint, out)


@pytest.fixture(scope="module")
def argmax_face(random_weights, astronaut):
    return EmotionRecognizer(random_weights).predict(astronaut)[0]


@pytest.fixture(scope="module")
def offsets(argmax_face) -> np.ndarray:
    """Offsets that move the astronaut's label from the most probable emotion to the least probable one."""
    probs = np.array([argmax_face.probs[name] for name in EMOTIONS])
    target = int(probs.argmin())
    values = np.zeros(len(EMOTIONS))
    values[target] = np.log(probs.max() / probs.min()) + 2.0  # a clear margin over every other emotion
    return values - values.mean()


@pytest.fixture(scope="module")
def balanced_weights(tmp_path_factory, random_weights, offsets) -> Path:
    return with_offsets(random_weights, tmp_path_factory.mktemp("balanced") / "balanced.pt", offsets)


def expected_label(face, offsets) -> str:
    probs = np.array([face.probs[name] for name in EMOTIONS])
    return EMOTIONS[int(np.argmax(np.log(probs) + offsets))]


def test_the_api_decision_changes_the_label_never_the_probabilities(balanced_weights, offsets, argmax_face, astronaut):
    recognizer = EmotionRecognizer(balanced_weights)
    plain = recognizer.predict(astronaut)[0]
    assert recognizer.decision == "argmax" and plain.decision == "argmax"
    assert plain.label == argmax_face.label == max(plain.probs, key=plain.probs.get)
    balanced = recognizer.predict(astronaut, decision="balanced")[0]  # per call
    assert balanced.decision == "balanced" and balanced.probs == plain.probs
    assert balanced.label != plain.label and balanced.label == expected_label(balanced, offsets)
    assert balanced.confidence == balanced.probs[balanced.label]  # the probability of the label given
    by_default = EmotionRecognizer(balanced_weights, decision="balanced")  # the recognizer's default
    assert by_default.predict(astronaut)[0].to_dict() == balanced.to_dict()
    assert by_default.predict(astronaut, decision="argmax")[0].to_dict() == plain.to_dict()
    crops = by_default.classify_faces([astronaut[30:200, 150:300]])
    assert crops[0].decision == "balanced" and crops[0].label == expected_label(crops[0], offsets)
    with pytest.raises(MsferError, match="unknown decision rule 'bayes'"):
        recognizer.predict(astronaut, decision="bayes")


def test_balanced_without_offsets_is_a_clear_error(random_weights, astronaut):
    with pytest.raises(MsferError, match=r"random\.pt has no balanced decision rule"):
        EmotionRecognizer(random_weights, decision="balanced")
    with pytest.raises(MsferError, match="no balanced decision rule"):
        EmotionRecognizer(random_weights).predict(astronaut, decision="balanced")


def test_torch_and_onnx_agree_and_the_offsets_travel_in_the_onnx_metadata(
    balanced_weights, random_weights, offsets, astronaut, tmp_path
):
    pytest.importorskip("onnx")
    import onnx

    exported = tmp_path / "balanced.onnx"
    assert main(["export", "--out", str(exported), "--weights", str(balanced_weights)]) == 0
    metadata = {prop.key: json.loads(prop.value) for prop in onnx.load(str(exported)).metadata_props}
    assert np.allclose(metadata["balanced_offsets"], offsets, atol=1e-6)
    assert metadata["calibration"]["method"] == "temperature" and metadata["calibration"]["ece"] == 0.031
    torch_faces = EmotionRecognizer(balanced_weights, decision="balanced").predict(astronaut)
    for weights in (exported, balanced_weights):  # an exported file, or a checkpoint exported in memory
        onnx_recognizer = EmotionRecognizer(weights, backend="onnx", decision="balanced")
        assert onnx_recognizer.calibration == EmotionRecognizer(balanced_weights).calibration
        onnx_faces = onnx_recognizer.predict(astronaut)
        assert [f.label for f in onnx_faces] == [f.label for f in torch_faces]
        assert onnx_faces[0].probs == pytest.approx(torch_faces[0].probs, abs=1e-4)
    plain = tmp_path / "plain.onnx"
    assert main(["export", "--out", str(plain), "--weights", str(random_weights)]) == 0
    with pytest.raises(MsferError, match="no balanced decision rule"):
        EmotionRecognizer(plain, backend="onnx", decision="balanced")
    # A file exported before the offsets were part of the metadata has no balanced rule either.
    model = onnx.load(str(exported))
    kept = [prop for prop in model.metadata_props if prop.key != "balanced_offsets"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(MsferError, match="no balanced decision rule"):
        EmotionRecognizer(tmp_path / "old.onnx", backend="onnx", decision="balanced")


def test_predict_decision_option(balanced_weights, random_weights, offsets, astronaut, tmp_path, capsys):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo, quality=95)
    faces = {}
    for rule in ("argmax", "balanced"):
        for suffix in ("jsonl", "csv"):
            out = tmp_path / f"{rule}.{suffix}"
            assert (
                main(["predict", str(photo), "--weights", str(balanced_weights), "--out", str(out), "--decision", rule])
                == 0
            )
        faces[rule] = json.loads((tmp_path / f"{rule}.jsonl").read_text())["faces"][0]
        columns = next(csv.DictReader((tmp_path / f"{rule}.csv").open()))
        assert columns["label"] == faces[rule]["label"] and columns["decision"] == rule
    assert faces["argmax"]["probs"] == faces["balanced"]["probs"]
    assert faces["argmax"]["label"] == max(faces["argmax"]["probs"], key=faces["argmax"]["probs"].get)
    probs = np.array([faces["balanced"]["probs"][name] for name in EMOTIONS])
    assert faces["balanced"]["label"] == EMOTIONS[int(np.argmax(np.log(probs) + offsets))] != faces["argmax"]["label"]
    capsys.readouterr()
    assert main(["predict", str(photo), "--weights", str(random_weights), "--decision", "balanced"]) == 2
    assert "no balanced decision rule" in capsys.readouterr().err


def test_service_decision_parameter(balanced_weights, random_weights, offsets, astronaut):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import io

    from fastapi.testclient import TestClient

    from msfer.inference.service import create_app

    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "JPEG", quality=90)
    upload = {"image": ("astronaut.jpg", buffer.getvalue(), "image/jpeg")}
    client = TestClient(create_app(EmotionRecognizer(balanced_weights)))
    health = client.get("/healthz").json()
    assert health["decision"] == "argmax" and health["balanced_decision"] is True
    plain = client.post("/v1/predict", files=upload).json()
    by_query = client.post("/v1/predict?decision=balanced", files=upload).json()
    by_form = client.post("/v1/predict", files=upload, data={"decision": "balanced"}).json()
    raw = client.post("/v1/predict?decision=balanced", content=buffer.getvalue()).json()
    assert (
        plain["decision"] == "argmax" and by_query["decision"] == by_form["decision"] == raw["decision"] == "balanced"
    )
    for result in (by_query, by_form, raw):
        face = result["faces"][0]
        assert face["probs"] == plain["faces"][0]["probs"] and face["decision"] == "balanced"
        probs = np.array([face["probs"][name] for name in EMOTIONS])
        assert face["label"] == EMOTIONS[int(np.argmax(np.log(probs) + offsets))] != plain["faces"][0]["label"]
    unknown = client.post("/v1/predict?decision=bayes", files=upload)
    assert unknown.status_code == 422 and "unknown decision rule" in unknown.json()["detail"]
    without = TestClient(create_app(EmotionRecognizer(random_weights)))
    assert without.get("/healthz").json()["balanced_decision"] is False
    refused = without.post("/v1/predict", files=upload, data={"decision": "balanced"})
    assert refused.status_code == 422 and "no balanced decision rule" in refused.json()["detail"]


def test_evaluate_detect_faces_under_both_rules(balanced_weights, astronaut, tmp_path):
    root = tmp_path / "photos"
    (root / "happy").mkdir(parents=True)
    Image.fromarray(astronaut).save(root / "happy" / "astronaut.jpg", quality=95)
    Image.fromarray(astronaut[:, ::-1]).save(root / "happy" / "mirrored.jpg", quality=95)
    results = {}
    for rule in ("argmax", "balanced"):
        out = tmp_path / rule
        assert (
            main(
                [
                    "evaluate",
                    "--weights",
                    str(balanced_weights),
                    "--data",
                    str(root),
                    "--format",
                    "folder",
                    "--out",
                    str(out),
                    "--detect-faces",
                    "--device",
                    "cpu",
                    "--decision",
                    rule,
                ]
            )
            == 0
        )
        results[rule] = json.loads((out / "metrics.json").read_text())
        assert results[rule]["decision"] == rule and set(results[rule]["decision_rules"]) == {"argmax", "balanced"}
        assert results[rule]["calibration"]["n"] == 2
    # Both runs measure both rules identically; the headline follows the rule asked for.
    assert results["argmax"]["decision_rules"] == results["balanced"]["decision_rules"]
    for rule in ("argmax", "balanced"):
        assert results[rule]["overall_accuracy"] == results["argmax"]["decision_rules"][rule]["overall_accuracy"]
    assert results["argmax"]["confusion_matrix"] != results["balanced"]["confusion_matrix"]


def test_a_rule_fitted_at_tau_0_is_balanced_and_equals_argmax(random_weights, astronaut, tmp_path):
    """The bundling step may choose tau 0 (zero offsets): the model still has its balanced rule, equal to argmax,
    in the API, `msfer evaluate` on crops and photos, the service's health and an ONNX export."""
    checkpoint = calibrated_checkpoint(load_checkpoint(random_weights), [1.0] * 7, [0.0] * 7, [0.0] * 7,
                                       {**CALIBRATION_RECORD, "balanced_tau": 0.0})
    weights = save_checkpoint(checkpoint, tmp_path / "tau0.pt")
    recognizer = EmotionRecognizer(weights, decision="balanced")
    assert recognizer.has_balanced_rule and recognizer.calibration["balanced_tau"] == 0.0
    face = recognizer.predict(astronaut)[0]
    assert face.decision == "balanced" and face.to_dict() == {
        **recognizer.predict(astronaut, decision="argmax")[0].to_dict(), "decision": "balanced"}
    root = tmp_path / "photos" / "happy"
    root.mkdir(parents=True)
    Image.fromarray(astronaut).save(root / "astronaut.jpg", quality=95)
    for extra in ([], ["--detect-faces"]):
        out = tmp_path / f"eval{len(extra)}"
        assert main(["evaluate", "--weights", str(weights), "--data", str(root.parent), "--format", "folder",
                     "--out", str(out), "--device", "cpu", "--num-workers", "0", "--decision", "balanced",
                     *extra]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        rules = metrics["decision_rules"]
        assert metrics["decision"] == "balanced" and rules["balanced"] == rules["argmax"]
        assert (out / "reliability.png").is_file()  # crops and photos alike
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from msfer.inference.service import create_app

    assert TestClient(create_app(recognizer)).get("/healthz").json()["balanced_decision"] is True
    pytest.importorskip("onnx")
    exported = tmp_path / "tau0.onnx"
    assert main(["export", "--out", str(exported), "--weights", str(weights)]) == 0
    onnx_face = EmotionRecognizer(exported, backend="onnx", decision="balanced").predict(astronaut)[0]
    assert onnx_face.label == face.label


def test_evaluate_refuses_balanced_before_reading_the_data(random_weights, tmp_path, capsys):
    """A model without the rule is refused at once, not after the whole split was scored."""
    missing = tmp_path / "not_there"
    assert main(["evaluate", "--weights", str(random_weights), "--data", str(missing), "--format", "folder",
                 "--out", str(tmp_path / "e"), "--device", "cpu", "--decision", "balanced"]) == 2
    assert "no balanced decision rule" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_a_models_own_rule_is_the_default_and_survives_onnx_export(random_weights, offsets, tmp_path, astronaut):
    from msfer.engine.calibration import calibrated_checkpoint

    record = {**CALIBRATION_RECORD, "balanced_tau": 1.0, "decision": "balanced"}
    weights = save_checkpoint(calibrated_checkpoint(load_checkpoint(random_weights), [1.0] * 7, [0.0] * 7,
                                                    list(offsets), record), tmp_path / "own.pt")
    assert EmotionRecognizer(weights).decision == "balanced"
    assert EmotionRecognizer(weights, decision="argmax").decision == "argmax"
    onnx = tmp_path / "own.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(onnx)]) == 0
    from_onnx = EmotionRecognizer(onnx, backend="onnx")
    assert from_onnx.decision == from_onnx.model_decision == "balanced"
    assert from_onnx.predict(astronaut)[0].label == EmotionRecognizer(weights).predict(astronaut)[0].label


def test_evaluate_uses_the_models_own_rule_on_crops(random_weights, offsets, tmp_path):
    from msfer.engine.calibration import calibrated_checkpoint

    record = {**CALIBRATION_RECORD, "balanced_tau": 1.0, "decision": "balanced"}
    weights = save_checkpoint(calibrated_checkpoint(load_checkpoint(random_weights), [1.0] * 7, [0.0] * 7,
                                                    list(offsets), record), tmp_path / "own.pt")
    data = tmp_path / "crops" / "val"
    for name in ("happy", "sad"):
        (data / name).mkdir(parents=True)
        Image.fromarray(np.full((48, 48, 3), 30 * len(name), np.uint8)).save(data / name / "a.png")
    for args, rule in (([], "balanced"), (["--decision", "argmax"], "argmax")):
        out = tmp_path / f"eval_{rule}"
        assert main(["evaluate", "--data", str(tmp_path / "crops"), "--format", "folder", "--split", "val",
                     "--out", str(out), "--weights", str(weights), "--num-workers", "0", *args]) == 0
        assert json.loads((out / "metrics.json").read_text())["decision"] == rule
