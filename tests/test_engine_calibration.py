"""Calibration: the measures against hand-worked examples, fitting, the model applying it
in PyTorch and ONNX Runtime alike, and the decision rule changing labels but never probabilities."""
import json

import numpy as np
import pytest
import torch

from msfer.engine import calibration as C
from msfer.engine.decision import decide
from msfer.errors import MsferError
from msfer.labels import EMOTIONS


def test_expected_calibration_error_hand_worked():
    # bin 14 (0.933-1.0): confidences 0.95, 0.95, one right -> |0.5 - 0.95| = 0.45, weight 2/4
    # bin 8 (0.533-0.6): confidences 0.55, 0.55, both right -> |1.0 - 0.55| = 0.45, weight 2/4
    probs = np.array([[0.95, 0.05, 0.0], [0.95, 0.05, 0.0], [0.55, 0.45, 0.0], [0.0, 0.55, 0.45]])
    labels = np.array([0, 1, 0, 1])
    assert C.expected_calibration_error(probs, labels) == pytest.approx(0.45)
    # perfectly calibrated: confidence 0.5 and half of them right
    assert C.expected_calibration_error(np.array([[0.5, 0.5, 0.0]] * 4), np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_nll_and_brier_hand_worked():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    labels = np.array([0, 2])
    assert C.negative_log_likelihood(probs, labels) == pytest.approx((-np.log(0.5) - np.log(0.1)) / 2)
    # (0.25 + 0.0625 + 0.0625) and (0.01 + 0.64 + 0.81)
    assert C.brier_score(probs, labels) == pytest.approx((0.375 + 1.46) / 2)


def synthetic(n: int = 4000, seed: int = 0):
    """True logits, labels drawn from their softmax (so they are calibrated by construction)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, 7)) + np.log([0.14, 0.02, 0.14, 0.25, 0.17, 0.11, 0.17])
    probs = C.softmax(logits)
    labels = np.array([rng.choice(7, p=p) for p in probs])
    return logits, labels


def test_fitting_undoes_a_known_temperature_and_class_bias():
    logits, labels = synthetic()
    scale, bias = C.fit(logits * 3.0, labels, "temperature")
    assert np.allclose(scale, 1 / 3, rtol=0.08) and np.allclose(bias, 0)
    shift = np.array([0.0, 1.5, 0.0, -0.5, 0.0, 0.0, 0.0])
    scale, bias = C.fit(logits + shift, labels, "vector")
    assert np.allclose(bias, -(shift - shift.mean()), atol=0.25)
    with pytest.raises(MsferError, match="temperature"):
        C.fit(logits, labels, "isotonic")


def test_choose_calibration_reports_the_half_it_did_not_fit_on():
    logits, labels = synthetic()
    flattened = logits / 3.0  # underconfident, as label smoothing and a focal loss make a model
    result = C.choose_calibration(flattened, labels)
    assert result["method"] in ("temperature", "vector")
    held = result["held_out"]
    assert held["calibrated"]["n"] == held["uncalibrated"]["n"] and abs(held["calibrated"]["n"] - len(labels) / 2) <= 7
    assert held["uncalibrated"]["ece"] > 0.1 > 0.04 > held["calibrated"]["ece"]
    assert held["calibrated"]["max_class_mass_gap"] < 0.03
    assert held["calibrated"]["mean_confidence"] > held["uncalibrated"]["mean_confidence"]


def test_balanced_decision_changes_labels_never_probabilities():
    probs = np.array([[0.6, 0.3, 0.1, 0, 0, 0, 0], [0.1, 0.2, 0.7, 0, 0, 0, 0]]) + 1e-9
    offsets = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    before = probs.copy()
    assert decide(probs, offsets, "argmax").tolist() == [0, 2]
    assert decide(probs, offsets, "balanced").tolist() == [1, 2]  # log .3 + 1 > log .6
    assert np.array_equal(probs, before)
    with pytest.raises(MsferError, match="decision rule"):
        decide(probs, offsets, "fair")


def calibrated_copy(random_weights, tmp_path, scale, bias, offsets):
    from msfer.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = C.calibrated_checkpoint(load_checkpoint(random_weights), scale, bias, offsets, {"method": "vector"})
    return save_checkpoint(checkpoint, tmp_path / "calibrated.pt")


def test_the_network_applies_its_calibration_and_old_files_load_as_identity(random_weights, tmp_path):
    from msfer.model.checkpoint import load_checkpoint, load_model, save_checkpoint

    scale, bias = [2.0, 1.0, 0.5, 1.5, 1.0, 3.0, 1.0], [0.1, -0.2, 0.0, 0.3, 0.0, -0.1, -0.1]
    path = calibrated_copy(random_weights, tmp_path, scale, bias, [0.0] * 7)
    plain, _ = load_model(random_weights)
    calibrated, meta = load_model(path)
    assert meta["calibration"] == {"method": "vector"}
    images = torch.randn(2, 3, plain.input_size, plain.input_size)
    with torch.no_grad():
        expected = plain(images)["logits"] * torch.tensor(scale) + torch.tensor(bias)
        torch.testing.assert_close(calibrated(images)["logits"], expected)
    # a checkpoint written before the calibration buffers existed loads with the identity
    old = load_checkpoint(random_weights)
    old["model"] = {k: v for k, v in old["model"].items() if k not in ("logit_scale", "logit_bias", "balanced_offsets")}
    model, _ = load_model(save_checkpoint(old, tmp_path / "old.pt"))
    assert torch.equal(model.logit_scale, torch.ones(7)) and torch.equal(model.logit_bias, torch.zeros(7))


def test_pytorch_and_onnx_runtime_apply_the_same_calibration(random_weights, tmp_path):
    pytest.importorskip("onnx")
    import onnxruntime

    from msfer.inference.export import export_onnx
    from msfer.model.checkpoint import load_model

    path = calibrated_copy(random_weights, tmp_path, [3.0, 1.0, 0.5, 1.5, 1.0, 2.0, 1.0],
                           [0.5, -0.2, 0, 0.3, 0, -0.3, -0.3], [0.0] * 7)
    model, _ = load_model(path)
    onnx_path = export_onnx(path, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, model.input_size, model.input_size)
    with torch.no_grad():
        expected = model(images)["logits"].softmax(1).numpy()
    logits = session.run(["logits"], {"images": images.numpy()})[0]
    np.testing.assert_allclose(C.softmax(logits), expected, atol=1e-4)


def test_evaluate_reports_calibration_and_both_decision_rules(random_weights, tmp_path):
    """`--decision balanced` moves every face to the favoured class; the probabilities (and so the
    calibration figures) are the same under both rules."""
    from PIL import Image

    from msfer.cli import main as cli

    rng = np.random.default_rng(0)
    for name in EMOTIONS:
        (tmp_path / "faces" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "faces" / name / "0.png")
    offsets = [0.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    path = calibrated_copy(random_weights, tmp_path, [1.0] * 7, [0.0] * 7, offsets)
    results = {}
    for rule in ("argmax", "balanced"):
        assert cli(["evaluate", "--weights", str(path), "--data", str(tmp_path / "faces"), "--format", "folder",
                    "--out", str(tmp_path / rule), "--num-workers", "0", "--device", "cpu", "--decision", rule]) == 0
        results[rule] = json.loads((tmp_path / rule / "metrics.json").read_text())
        assert (tmp_path / rule / "reliability.png").stat().st_size > 0
    balanced = results["balanced"]
    assert [row[EMOTIONS.index("disgust")] for row in balanced["confusion_matrix"]] == [1] * len(EMOTIONS)
    assert balanced["calibration"] == results["argmax"]["calibration"]
    assert set(balanced["decision_rules"]) == {"argmax", "balanced"}
    assert {"ece", "nll", "brier"} <= set(balanced["calibration"])


def test_balanced_decision_needs_a_bundled_rule(random_weights, tmp_path):
    from PIL import Image

    from msfer.cli import main as cli

    (tmp_path / "faces" / "happy").mkdir(parents=True)
    Image.new("L", (48, 48), 128).save(tmp_path / "faces" / "happy" / "0.png")
    assert cli(["evaluate", "--weights", str(random_weights), "--data", str(tmp_path / "faces"), "--format", "folder",
                "--out", str(tmp_path / "e"), "--num-workers", "0", "--device", "cpu", "--decision", "balanced"]) == 2


def test_ece_floor_is_the_expected_ece_of_a_perfectly_calibrated_model_and_shrinks_with_more_faces():
    """Labels drawn from the probabilities make a perfectly calibrated model; its ECE on N faces is not 0 but about
    the floor, which falls roughly as 1/sqrt(N)."""
    from msfer.engine.calibration import calibration_metrics, ece_floor, expected_calibration_error

    rng = np.random.default_rng(3)
    floors = {}
    for n in (90, 2000):
        probs = rng.dirichlet(np.full(7, 0.6), size=n)
        measured = np.array([expected_calibration_error(probs, np.array([rng.choice(7, p=p) for p in probs]))
                             for _ in range(60)])
        floors[n] = ece_floor(probs)
        assert abs(np.mean(measured) - floors[n]) < 0.15 * floors[n]
        assert ece_floor(probs) == floors[n]  # seeded: the same figure every call
        # the 95th percentile: what a calibrated model stays under 19 times in 20
        upper = calibration_metrics(probs, np.zeros(n, int))["ece_floor_95"]
        assert upper > floors[n] and np.mean(measured > upper) <= 0.15
    assert floors[90] > 0.08 and floors[2000] < 0.03 and floors[90] > 3 * floors[2000]
    overconfident = np.eye(7)[rng.integers(0, 7, 90)] * 0.9 + 0.1 / 7
    labels = rng.integers(0, 7, 90)
    assert expected_calibration_error(overconfident, labels) > 5 * ece_floor(overconfident)
    overconfident_metrics = calibration_metrics(overconfident, labels)
    assert overconfident_metrics["ece"] > overconfident_metrics["ece_floor_95"]


PHOTO = {"method": "yaw_temperature", "temperature": 1.3, "per_degree": 0.03, "yaw_limit": 45.0}


def overconfident_photos(n: int, seed: int):
    """Faces whose labels follow softmax(z / T(yaw)) while the model reports softmax(z): overconfident, the more so
    the more the head is turned (as on film frames)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, 7))
    yaw = rng.uniform(-60, 60, size=n)
    truth = C.softmax(logits / C.photo_temperatures(yaw, PHOTO)[:, None])
    labels = np.array([rng.choice(7, p=p) for p in truth])
    return C.softmax(logits), yaw, labels


def test_the_photo_temperature_rises_with_the_turn_up_to_its_limit_and_changes_no_label():
    assert C.photo_temperatures([0.0, -20.0, 20.0, 45.0, 80.0], PHOTO) == pytest.approx(
        [1.3, 1.3 * np.exp(0.6), 1.3 * np.exp(0.6), 1.3 * np.exp(1.35), 1.3 * np.exp(1.35)])
    probs, yaw, _ = overconfident_photos(200, seed=1)
    softened = C.with_photo_temperature(probs, yaw, PHOTO)
    assert np.allclose(softened.sum(axis=1), 1) and (softened.argmax(1) == probs.argmax(1)).all()
    assert (softened.max(1) < probs.max(1)).all()  # every temperature here is above 1
    # by hand for one face: softmax(log p / T)
    expected = probs[0] ** (1 / C.photo_temperatures(yaw[:1], PHOTO)[0])
    assert softened[0] == pytest.approx(expected / expected.sum())
    assert C.with_photo_temperature(probs, yaw, None) is not None and np.array_equal(
        C.with_photo_temperature(probs, yaw, None), probs)  # a model without one: unchanged
    # a photo without a face (a NaN row) stays one
    with_missing = probs[:3].copy()
    with_missing[1] = np.nan
    out = C.with_photo_temperature(with_missing, np.array([0.0, np.nan, 10.0]), PHOTO)
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    # a face without a yaw (no landmarks) keeps its probabilities
    assert C.with_photo_temperature(probs[:2], np.array([np.nan, 5.0]), PHOTO)[0] == pytest.approx(probs[0])


def test_fitting_the_photo_temperature_recovers_a_known_law_and_helps_on_faces_it_did_not_see():
    probs, yaw, labels = overconfident_photos(6000, seed=0)
    fitted = C.fit_photo_temperature(probs, yaw, labels)
    assert fitted["method"] == "yaw_temperature" and fitted["yaw_limit"] == C.YAW_LIMIT
    assert fitted["temperature"] == pytest.approx(1.3, rel=0.1)
    assert fitted["per_degree"] == pytest.approx(0.03, abs=0.006)

    # two sets of different turns; each is scored by fits on the other halves
    sets = {"frontal": overconfident_photos(400, seed=2), "turned": overconfident_photos(400, seed=3)}
    sets["frontal"] = (sets["frontal"][0], sets["frontal"][1] / 4, sets["frontal"][2])
    study = C.photo_temperature_study(sets)
    assert study["fitted_on"] == ["frontal", "turned"] and "cross-fitted" in study["criterion"]
    for name, figures in study["held_out"].items():
        assert figures["with"]["n"] == figures["without"]["n"] == 400
        assert figures["with"]["nll"] < figures["without"]["nll"], name
        assert figures["with"]["accuracy"] == figures["without"]["accuracy"]  # no label changes
    assert study["held_out"]["turned"]["with"]["ece"] < study["held_out"]["turned"]["without"]["ece"]
    assert study["too_few_faces"] == []
    one_each = (np.full((7, 7), 1 / 7), np.zeros(7), np.arange(7))  # every half of it would be empty
    assert C.photo_temperature_study({**sets, "tiny": one_each})["too_few_faces"] == ["tiny"]
    with pytest.raises(MsferError, match="both of its stratified halves.*tiny"):
        C.photo_temperature_study({"tiny": one_each})


def test_the_photo_temperature_travels_in_the_calibration_summary_and_the_onnx_file(random_weights, tmp_path):
    pytest.importorskip("onnx")
    from msfer.inference.backends import OnnxBackend, TorchBackend
    from msfer.inference.export import export_onnx
    from msfer.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(random_weights)
    checkpoint["calibration"] = {"method": "vector", "photos": {**PHOTO, "fitted_on": ["a"], "held_out": {}}}
    path = save_checkpoint(checkpoint, tmp_path / "photos.pt")
    summary = C.calibration_summary(checkpoint["calibration"])
    assert summary["photos"] == {**PHOTO, "fitted_on": ["a"]}  # the parameters, not the figures
    assert TorchBackend(path, "cpu").calibration["photos"] == summary["photos"]
    onnx_path = export_onnx(path, tmp_path / "photos.onnx")
    assert OnnxBackend(onnx_path, str(onnx_path)).calibration["photos"] == summary["photos"]

    # a malformed one is refused when the model is loaded, naming the file, not at the first photo
    from msfer import EmotionRecognizer

    checkpoint["calibration"]["photos"] = {"method": "yaw_temperature", "temperature": -1.0, "per_degree": 0.0}
    broken = save_checkpoint(checkpoint, tmp_path / "broken.pt")
    with pytest.raises(MsferError, match="broken.pt: its calibration's photo temperature is not one"):
        EmotionRecognizer(broken)
