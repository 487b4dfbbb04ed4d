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
