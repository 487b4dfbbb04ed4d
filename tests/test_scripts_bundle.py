"""scripts/bundle_model.py end to end on a real (tiny) plain classifier trained by `msfer train`: bundled as a
candidate into another folder, measured there (TCCE val through the whole pipeline included), compared with a
record, and refused where it would replace a better model."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageEnhance, ImageOps

from msfer.labels import EMOTIONS
from msfer.weights import BUNDLED_MODEL

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "src" / "msfer" / "samples" / "astronaut.jpg"
PUBLIC_TEST_PER_CLASS, TCCE_VAL_PER_CLASS = 9, 1
CROP_RULE = {"method": "box", "scale": 1.1}  # not the default, so the bundle must carry the checkpoint's own

# The fastest real model: MobileNetV2 classifier from scratch at 32 px, one epoch.
TINY_CONFIG = {
    "model": {"name": "classifier_mobilenetv2", "pretrained": False, "input_size": 32},
    "data": {"format": "fer2013", "val_split": "public_test", "num_workers": 0, "crop_rule": CROP_RULE},
    "train": {"batch_size": 8, "schedule": "none", "epochs": 1},
    "eval": {"batch_size": 16, "tta": False},
}


def bundle_script():
    spec = importlib.util.spec_from_file_location("bundle_model", ROOT / "scripts" / "bundle_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by its SHA-256."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def fer_tree(tmp_path_factory) -> Path:
    """FER2013's folder layout: train/ (2-4 per class: unequal, so the balanced rule has offsets) and public_test/
    (enough per class for the calibration's stratified halves and their 5 folds), 24 px grey noise."""
    root = tmp_path_factory.mktemp("fer2013")
    rng = np.random.default_rng(0)
    for split in ("train", "public_test"):
        for k, name in enumerate(EMOTIONS):
            (root / split / name).mkdir(parents=True)
            for i in range(2 + k % 3 if split == "train" else PUBLIC_TEST_PER_CLASS):
                Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tcce_tree(tmp_path_factory) -> Path:
    """TCCE's layout, val/<class>/*.jpg: 256 px colour photos of the sample's face (RetinaFace finds it), a
    different brightness (and side) per class."""
    root = tmp_path_factory.mktemp("tcce")
    photo = Image.open(ASTRONAUT).convert("RGB").resize((256, 256))
    for k, name in enumerate(EMOTIONS):
        (root / "val" / name).mkdir(parents=True)
        variant = ImageEnhance.Brightness(photo).enhance(0.7 + 0.1 * k)
        (ImageOps.mirror(variant) if k % 2 else variant).save(root / "val" / name / "0.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def trained(fer_tree, tmp_path_factory) -> Path:
    """A run folder of `msfer train` (one epoch of the tiny classifier) holding best.pt."""
    folder = tmp_path_factory.mktemp("train")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    run = folder / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "msfer.cli", "train", "--config", str(folder / "tiny.yaml"),
                             "--output-dir", str(run), f"data.root={fer_tree}"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run / "best.pt").is_file()
    return run


def test_a_classifier_is_bundled_into_another_folder_and_measured_there(trained, fer_tree, tcce_tree, tmp_path,
                                                                        capsys):
    from msfer.data.readers import read_dataset
    from msfer.inference.detect_eval import evaluate_with_detection
    from msfer.inference.recognizer import EmotionRecognizer

    shipped = digests(BUNDLED_MODEL.parent)
    script, out = bundle_script(), tmp_path / "candidate"
    assert script.main([str(trained), "--data", str(fer_tree), "--tcce", str(tcce_tree), "--out", str(out)]) == 0
    assert digests(BUNDLED_MODEL.parent) == shipped  # byte for byte, and no file added there
    assert sorted(os.listdir(out)) == ["msfer_fer2013.json", "msfer_fer2013.pt"]  # no temporary file left

    record = json.loads((out / "msfer_fer2013.json").read_text())
    assert {"calibration", "decision", "fixed_sample", "precision", "compared_with"} <= set(record)
    assert record["source"] == str(trained / "best.pt")
    assert record["config"]["model"]["name"] == "classifier_mobilenetv2"
    assert record["calibration"]["method"] in ("temperature", "vector")
    assert "bundled" in record["calibration"]["held_out"]
    assert record["fixed_sample"]["n"] == 7 * PUBLIC_TEST_PER_CLASS
    public = record["validation"][record["precision"]]["fer2013_public_test"]
    assert public["n"] == 7 * PUBLIC_TEST_PER_CLASS and "region_detection" not in public
    tcce = record["validation"]["tcce_val"]
    assert tcce["argmax"]["n"] == tcce["balanced"]["n"] == 7 * TCCE_VAL_PER_CLASS and tcce["faces_missed"] == 0

    # the written file loads with the API, carries the checkpoint's crop rule and its balanced rule, and
    # is the file TCCE val was measured with
    # the balanced rule divides out the prior the calibrated probabilities carry: their mean on public_test
    # (here 9 faces per class, where training saw 2-4: not training's prior)
    public_samples = [s for s in read_dataset(fer_tree, "fer2013").samples if s.split == "public_test"]
    probs = script.predict(out / "msfer_fer2013.pt", public_samples, None, tta=False)[0]["probs"]
    assert record["decision"]["class_prior"] == pytest.approx(probs.mean(axis=0), abs=2e-3)
    recognizer = EmotionRecognizer(out / "msfer_fer2013.pt", device="cpu")
    assert recognizer.decision == record["decision"]["default"] == "argmax"  # bundle_model.py's default
    assert recognizer.crop_rule.to_dict() == CROP_RULE
    assert np.allclose(recognizer.classifier.balanced_offsets, record["decision"]["offsets"], atol=1e-2)
    [face] = recognizer.predict(np.asarray(Image.open(ASTRONAUT).convert("RGB")))
    assert face.label in EMOTIONS and face.regions == {} and abs(sum(face.probs.values()) - 1) < 1e-3
    again = evaluate_with_detection(recognizer, [s for s in read_dataset(tcce_tree, "folder").samples])
    assert again["overall_accuracy"] == tcce["argmax"]["overall_accuracy"]  # the recognizer's rule: argmax
    # the probabilities too (a tiny model's accuracy alone could match another model's)
    assert again["calibration"]["nll"] == pytest.approx(tcce["calibration"]["nll"], rel=1e-6)
    assert again["calibration"]["mean_confidence"] == pytest.approx(tcce["calibration"]["mean_confidence"], rel=1e-6)

    # compared with the shipped record by default: measured on other sets, so no verdict is claimed
    compared = record["compared_with"]
    assert compared["record"] == "src/msfer/weights/msfer_fer2013.json"  # the shipped record, named in the repository
    assert not compared["replaced_by_this_bundle"]
    for rule in ("argmax", "balanced"):
        assert compared["verdicts"][rule]["verdict"] == "no verdict"
        assert "not the same set" in compared["verdicts"][rule]["why"]
    printed = capsys.readouterr().out
    assert "| TCCE val, whole pipeline | argmax |" in printed and "argmax: no verdict" in printed


def fake_record(accuracy: float) -> dict:
    """A record as bundle_model.py writes one, with every accuracy ``accuracy``, on the test's set sizes."""
    scores = {rule: {"overall_accuracy": accuracy, "mean_class_accuracy": accuracy} for rule in ("argmax", "balanced")}
    public = {"n": 7 * PUBLIC_TEST_PER_CLASS, "decision_rules": scores}
    return {"precision": "float16",
            "validation": {"float16": {"fer2013_public_test": public, "fer2013_public_test_tta": public},
                           "tcce_val": {rule: {"n": 7 * TCCE_VAL_PER_CLASS, **s} for rule, s in scores.items()}}}


def test_replacing_a_better_model_is_refused_unless_forced(trained, fer_tree, tcce_tree, tmp_path, capsys):
    script, folder = bundle_script(), tmp_path / "weights"
    folder.mkdir()
    (folder / "msfer_fer2013.json").write_text(json.dumps(fake_record(0.99)))
    (folder / "msfer_fer2013.pt").write_bytes(b"the better model")
    before = digests(folder)
    args = [str(trained), "--data", str(fer_tree), "--tcce", str(tcce_tree), "--out", str(folder)]
    with pytest.raises(SystemExit, match="refused to replace the model in .* the argmax rule .* is 'not better'"):
        script.main(args)
    assert digests(folder) == before  # nothing replaced, no temporary file left
    assert "argmax: not better" in capsys.readouterr().out

    assert script.main([*args, "--force", "--decision", "balanced"]) == 0
    assert sorted(os.listdir(folder)) == ["msfer_fer2013.json", "msfer_fer2013.pt"]
    record = json.loads((folder / "msfer_fer2013.json").read_text())
    # the chosen default decision rule is the record's and the model's own: the API uses it unless told otherwise
    from msfer.inference.recognizer import EmotionRecognizer

    assert record["decision"]["default"] == "balanced"
    assert EmotionRecognizer(folder / "msfer_fer2013.pt").decision == "balanced"
    assert record["compared_with"]["record"] == str(folder / "msfer_fer2013.json")
    assert record["compared_with"]["replaced_by_this_bundle"]  # the file named is the record this one replaced
    assert record["compared_with"]["verdicts"]["argmax"]["verdict"] == "not better"
    assert record["compared_with"]["record_figures"]["argmax"]["tcce_val"]["overall_accuracy"] == 0.99


def test_annotations_are_refused_for_a_classifier_before_anything_is_written(trained, fer_tree, tmp_path, capsys):
    out = tmp_path / "candidate"
    with pytest.raises(SystemExit) as exit_info:
        bundle_script().main([str(trained), "--data", str(fer_tree), "--annotations", str(tmp_path / "a.jsonl"),
                              "--out", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--annotations" in error and "plain classifier" in error
    assert not out.exists()


@pytest.mark.parametrize("case", ["no_run", "no_best", "no_data", "no_public_test", "no_tcce", "no_tcce_val",
                                  "out_is_a_file", "no_compare"])
def test_bad_inputs_are_one_line_errors_before_any_work(case, trained, fer_tree, tcce_tree, tmp_path, capsys):
    """Every input is checked first: a clear error naming it, exit status 2, and no --out folder left behind."""
    empty, a_file = tmp_path / "empty", tmp_path / "a_file"
    empty.mkdir()
    a_file.write_text("not a folder")
    args = {"run": trained, "--data": fer_tree, "--tcce": tcce_tree, "--out": tmp_path / "candidate",
            "--compare": BUNDLED_MODEL.with_suffix(".json")}
    option, bad = {"no_run": ("run", tmp_path / "missing_run"), "no_best": ("run", empty),
                   "no_data": ("--data", tmp_path / "missing"), "no_public_test": ("--data", empty),
                   "no_tcce": ("--tcce", tmp_path / "missing"), "no_tcce_val": ("--tcce", fer_tree),
                   "out_is_a_file": ("--out", a_file), "no_compare": ("--compare", tmp_path / "old.json")}[case]
    args[option] = bad
    with pytest.raises(SystemExit) as exit_info:
        bundle_script().main([str(args.pop("run")), *(str(x) for item in args.items() for x in item)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert str(bad) in error and len(error.strip().splitlines()) == 1  # one line, no usage block or traceback
    assert option == "run" or option in error
    assert a_file.read_text() == "not a folder" and not (tmp_path / "candidate").exists()


@pytest.mark.parametrize("out_case", ["made_with_its_parent", "there_before"])
def test_a_failed_bundle_leaves_no_folder_it_made(out_case, trained, fer_tree, tmp_path, monkeypatch):
    """A bundle that fails part way (here, its TCCE val step) removes the --out folders it made, parents too,
    and keeps one that was there before, even empty."""
    script = bundle_script()
    out = tmp_path / "parent" / "candidate" if out_case == "made_with_its_parent" else tmp_path / "existing"
    if out_case == "there_before":
        out.mkdir()

    def fails(*args):
        raise RuntimeError("the detector broke")

    monkeypatch.setattr(script, "tcce_val", fails)
    tcce = tmp_path / "tcce" / "val" / "happy"
    tcce.mkdir(parents=True)
    Image.open(ASTRONAUT).save(tcce / "0.jpg")
    with pytest.raises(RuntimeError, match="the detector broke"):
        script.main([str(trained), "--data", str(fer_tree), "--tcce", str(tmp_path / "tcce"), "--out", str(out)])
    if out_case == "there_before":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not (tmp_path / "parent").exists()


def test_the_kaggle_csv_is_data_too(fer_tree, tmp_path):
    """--data takes FER2013 as msfer's reader does: the folder tree or Kaggle's CSV."""
    rows = ["emotion,pixels,Usage"]
    for path in sorted((fer_tree / "public_test").rglob("*.png")):
        pixels = np.asarray(Image.open(path).resize((48, 48)))
        rows.append(f"{EMOTIONS.index(path.parent.name)},{' '.join(map(str, pixels.ravel()))},PublicTest")
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    samples = bundle_script().split_samples(tmp_path / "fer2013.csv", "fer2013", "public_test", "--data")
    assert len(samples) == PUBLIC_TEST_PER_CLASS * len(EMOTIONS)


def test_verdicts_need_both_validations_on_the_same_sets():
    script = bundle_script()
    old, better, worse = fake_record(0.5), fake_record(0.6), fake_record(0.6)
    worse["validation"]["tcce_val"]["argmax"]["overall_accuracy"] = 0.4  # better on FER2013, worse on TCCE
    assert script.compare(better, old, Path("old.json"))["verdicts"]["argmax"]["verdict"] == "better"
    # A record inside the repository is named relative to it: shipped records carry no machine's paths.
    inside = script.ROOT / "docs" / "training" / "old.json"
    assert script.compare(better, old, inside)["record"] == "docs/training/old.json"
    assert script.compare(worse, old, Path("old.json"))["verdicts"]["argmax"]["verdict"] == "not better"
    assert script.compare(worse, old, Path("old.json"))["verdicts"]["balanced"]["verdict"] == "better"

    del old["validation"]["tcce_val"]
    verdicts = script.compare(better, old, Path("old.json"))["verdicts"]
    assert verdicts["argmax"] == {"verdict": "no verdict",
                                  "why": "the compared record has no TCCE val, whole pipeline figures"}
    del better["validation"]["tcce_val"]
    verdicts = script.compare(better, fake_record(0.5), Path("old.json"))["verdicts"]
    assert verdicts["argmax"]["verdict"] == "no verdict" and "(bundle with --tcce)" in verdicts["argmax"]["why"]
