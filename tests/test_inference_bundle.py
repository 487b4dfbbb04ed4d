"""`msfer bundle` end to end on a real (tiny) plain classifier trained by `msfer train`: calibrated on a suite's crops
set, bundled as a candidate into another folder, scored there on the whole suite beside the model it is compared
with, and refused where it would replace a model it does not beat."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance, ImageOps
from test_bundled_model import strings

from msfer.cli import main
from msfer.errors import MsferError
from msfer.inference.bundle import paired_standard_error, suite_verdict
from msfer.labels import EMOTIONS
from msfer.weights import BUNDLED_MODEL

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "src" / "msfer" / "samples" / "astronaut.jpg"
PUBLIC_TEST_PER_CLASS, TCCE_VAL_PER_CLASS = 9, 2
CROP_RULE = {"method": "box", "scale": 1.1}  # not the default, so the bundle must carry the checkpoint's own

# The fastest real model: MobileNetV2 classifier from scratch at 32 px, one epoch.
TINY_CONFIG = {
    "model": {"name": "classifier_mobilenetv2", "pretrained": False, "input_size": 32},
    "data": {"format": "fer2013", "val_split": "public_test", "num_workers": 0, "crop_rule": CROP_RULE},
    "train": {"batch_size": 8, "schedule": "none", "epochs": 1},
    "eval": {"batch_size": 16, "tta": False},
}


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
    different brightness (and side) per class, the second of each class squeezed sideways (another yaw)."""
    root = tmp_path_factory.mktemp("tcce")
    photo = Image.open(ASTRONAUT).convert("RGB").resize((256, 256))
    for k, name in enumerate(EMOTIONS):
        (root / "val" / name).mkdir(parents=True)
        variant = ImageEnhance.Brightness(photo).enhance(0.7 + 0.1 * k)
        variant = ImageOps.mirror(variant) if k % 2 else variant
        variant.save(root / "val" / name / "0.jpg", quality=90)
        ImageOps.pad(variant.resize((192, 256)), (256, 256)).save(root / "val" / name / "1.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def suite_file(fer_tree, tcce_tree, tmp_path_factory) -> Path:
    """A suite of the two trees: FER2013 public_test (crops) and TCCE val (posed photos, the whole pipeline), and
    FER2013 public_test again outside the score."""
    sets = [{"name": "fer2013_public_test", "domain": "crops", "format": "fer2013", "root": str(fer_tree),
             "split": "public_test", "mode": "crops"},
            {"name": "tcce_val", "domain": "posed photos", "format": "folder", "root": str(tcce_tree), "split": "val",
             "mode": "photos"},
            {"name": "aside", "domain": None, "format": "fer2013", "root": str(fer_tree), "split": "public_test",
             "mode": "crops"}]
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "sets": sets}))
    return path


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



def bundle_args(trained: Path, suite_file: Path, out: Path, *extra: str) -> list[str]:
    return ["bundle", str(trained), str(suite_file), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def bundled(trained, suite_file, tmp_path_factory) -> tuple[Path, str, dict, dict]:
    """The tiny run bundled into a new folder: (the folder, what msfer bundle printed, the package's weights folder's
    digests before and after)."""
    import contextlib
    import io

    shipped = digests(BUNDLED_MODEL.parent)
    out, printed = tmp_path_factory.mktemp("bundled") / "candidate", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(bundle_args(trained, suite_file, out)) == 0
    return out, printed.getvalue(), shipped, digests(BUNDLED_MODEL.parent)


def test_a_classifier_is_bundled_into_another_folder_and_judged_on_the_suite(bundled, trained, fer_tree, tcce_tree):
    from msfer.data.readers import read_dataset
    from msfer.engine.calibration import PHOTO_TEMPERATURE_KEYS, negative_log_likelihood
    from msfer.inference.detect_eval import evaluate_with_detection, photo_predictions
    from msfer.inference.recognizer import EmotionRecognizer

    out, printed, shipped, after = bundled
    assert after == shipped  # byte for byte, and no file added there
    assert sorted(os.listdir(out)) == ["msfer_fer2013.json", "msfer_fer2013.pt"]  # no temporary file left

    record = json.loads((out / "msfer_fer2013.json").read_text())
    assert {"calibration", "decision", "fixed_sample", "precision", "suite", "verdict", "config"} <= set(record)
    assert record["source"] == "run/best.pt"  # no bundling machine's folders: the path's last two parts
    assert record["epoch"] == record["best_epoch"] == 1  # best.pt: its own epoch is the best one
    assert record["config"]["data"]["root"] == f"{fer_tree.parent.name}/{fer_tree.name}"  # trained with its full path
    from msfer.model.checkpoint import load_checkpoint

    shipped_config = load_checkpoint(out / "msfer_fer2013.pt")["config"]
    for text in strings(record) + strings(shipped_config):
        assert not (Path(text).is_absolute() or text.startswith("~")), text
    assert record["calibrated_on"] == "fer2013_public_test"  # the suite's first crops set
    assert record["config"]["model"]["name"] == "classifier_mobilenetv2"
    assert record["calibration"]["method"] in ("temperature", "vector")
    assert "bundled" in record["calibration"]["held_out"]
    assert record["fixed_sample"]["n"] == 7 * PUBLIC_TEST_PER_CLASS
    public = record["validation"][record["precision"]]["fer2013_public_test"]
    assert public["n"] == 7 * PUBLIC_TEST_PER_CLASS and "region_detection" not in public

    # the suite: the candidate under both rules (its default is chosen there) and the bundled model (compared by
    # default) under its own, on every set
    rows = {(row["set"], row["model"]): row for row in record["suite"]["rows"]}
    assert set(rows) == {(s, m) for s in ("fer2013_public_test", "tcce_val", "aside")
                         for m in ("candidate argmax", "candidate balanced", "bundled")}
    default = record["decision"]["default"]
    assert record["decision"]["chosen_on"] == "suite" and set(record["decision"]["suite"]) == {"argmax", "balanced"}
    candidate = f"candidate {default}"
    scores = {entry["model"]: entry["score_overall"] for entry in record["suite"]["scores"]}
    assert record["decision"]["suite"][default]["score_overall"] == scores[candidate]
    assert rows["tcce_val", candidate]["n"] == 7 * TCCE_VAL_PER_CLASS and rows["tcce_val", candidate]["missed"] == 0
    assert all("root" not in entry for entry in record["suite"]["suite"]["sets"])  # no machine's data paths
    verdict = record["verdict"]
    assert verdict["verdict"] in ("better", "not better") and verdict["why"]
    assert [(c["set"], c["against"]) for c in verdict["sets"]] == [("fer2013_public_test", "bundled"),
                                                                    ("tcce_val", "bundled")]  # "aside": no domain
    for check in verdict["sets"]:
        row, theirs = rows[check["set"], candidate], rows[check["set"], "bundled"]
        assert check["candidate"] == pytest.approx(row["overall_accuracy"])
        assert check["compared"] == pytest.approx(theirs["overall_accuracy"])
        assert check["within"] == (check["difference"] >= -check["standard_error"])
    assert "| tcce_val | bundled |" in printed and f"verdict: {verdict['verdict']}" in printed
    assert "default decision rule chosen on the suite: argmax: suite score" in printed and f"-> {default}" in printed
    assert record["replaced"] is None and "held no model: the candidate is written whatever the verdict" in printed
    assert record["name"] == "run" and "bundled run as " in printed  # the run folder's name, unless given one

    # the written file loads with the API, carries the checkpoint's crop rule and its balanced rule, and is the
    # file the suite measured: its TCCE val figures are the whole pipeline's on that file
    recognizer = EmotionRecognizer(out / "msfer_fer2013.pt", device="cpu")
    assert recognizer.decision == default  # the rule the suite chose is the model's own
    assert EmotionRecognizer(out, device="cpu").decision == default  # the folder names its model too
    assert recognizer.crop_rule.to_dict() == CROP_RULE
    # the file carries what only the whole bundle measured, so a copy of it alone still says it
    import shutil

    copy = Path(shutil.copy(out / "msfer_fer2013.pt", out.parent / "copy.pt"))
    elsewhere = EmotionRecognizer(copy, device="cpu", detector=recognizer.detector)
    assert recognizer.model_name == elsewhere.model_name == "run"
    calibration = elsewhere.calibration
    assert calibration["ece"] == record["calibration"]["held_out"]["bundled"]["ece"]
    assert calibration["set"] == "fer2013_public_test"  # which set's held-out half those are
    # the score's sets but the calibration set, whose held-out half's figures those are
    assert calibration["sets"] == record["calibration"]["suite"] and set(calibration["sets"]) == {"tcce_val"}
    row = rows["tcce_val", candidate]  # under the default rule
    # the photo set fitted a photo temperature, kept where it lowers the negative log-likelihood on faces it was not
    # fitted on (cross-fitted halves), else recorded as declined
    kept, declined = record["calibration"].get("photos"), record["calibration"].get("photos_declined")
    assert (kept is None) != (declined is None)
    study = kept or declined
    assert study["fitted_on"] == ["tcce_val"] and study["held_out"]["tcce_val"]["with"]["n"] == row["n"] - row["missed"]
    assert study["held_out"]["tcce_val"]["without"]["nll"] == pytest.approx(row["nll"])  # the rows' own faces
    pays = study["held_out"]["tcce_val"]["with"]["nll"] < study["held_out"]["tcce_val"]["without"]["nll"]
    assert pays == (kept is not None)
    assert recognizer.photo_temperature == (None if kept is None else {key: kept[key] for key in
                                                                        PHOTO_TEMPERATURE_KEYS})
    figures = {"domain": "posed photos", "n": row["n"], "missed": row["missed"], "ece": row["ece"],
               "ece_floor_95": row["ece_floor_95"], "overall_accuracy": row["overall_accuracy"]}
    if kept:  # the set's figures are those with the photo temperature, each face scored by a fit on the other half
        figures.update(ece=kept["held_out"]["tcce_val"]["with"]["ece"], photo_temperature="cross-fitted",
                       ece_floor_95=kept["held_out"]["tcce_val"]["with"]["ece_floor_95"])
    assert calibration["sets"]["tcce_val"] == figures
    assert f"photo temperature T = {study['temperature']:.3f} x exp(" in printed
    assert printed.split("photo temperature")[1].splitlines()[0].endswith("-> kept" if kept else "-> declined")
    assert np.allclose(recognizer.classifier.balanced_offsets, record["decision"]["offsets"], atol=1e-2)
    [face] = recognizer.predict(np.asarray(Image.open(ASTRONAUT).convert("RGB")))
    assert face.label in EMOTIONS and face.regions == {} and abs(sum(face.probs.values()) - 1) < 1e-3
    again = evaluate_with_detection(recognizer, read_dataset(tcce_tree, "folder").samples)
    assert again["overall_accuracy"] == rows["tcce_val", candidate]["overall_accuracy"]
    # the probabilities too (a tiny model's accuracy alone could match another model's): the suite measured them
    # before the photo temperature was fitted
    tcce = read_dataset(tcce_tree, "folder").samples
    decided, reported = photo_predictions(recognizer, tcce)
    found = ~np.isnan(decided).any(axis=1)
    truth = np.array([sample.label for sample in tcce])[found]
    assert negative_log_likelihood(decided[found], truth) == pytest.approx(rows["tcce_val", candidate]["nll"],
                                                                           rel=1e-6)
    assert again["calibration"]["nll"] == pytest.approx(negative_log_likelihood(reported[found], truth), rel=1e-6)
    # the balanced rule divides out the prior the calibrated probabilities carry: their mean on public_test
    # (here 9 faces per class, where training saw 2-4: not training's prior)
    public_samples = [s for s in read_dataset(fer_tree, "fer2013").samples if s.split == "public_test"]
    probs = recognizer.classify_crops([np.asarray(s.load()) for s in public_samples])[0]
    assert record["decision"]["class_prior"] == pytest.approx(probs.mean(axis=0), abs=2e-3)


def test_replacing_a_model_the_candidate_does_not_beat_is_refused_unless_forced(bundled, trained, suite_file,
                                                                                tmp_path, capsys):
    import shutil

    from msfer.inference.recognizer import EmotionRecognizer

    folder = tmp_path / "weights"
    shutil.copytree(bundled[0], folder)  # the same run, bundled before
    before = digests(folder)
    # against itself (the model the folder holds, always compared first) its suite score is not higher, even when
    # other models are named to compare with
    assert main(bundle_args(trained, suite_file, folder, "--compare", f"v1={BUNDLED_MODEL}")) == 2
    assert digests(folder) == before  # nothing replaced, no temporary file left
    captured = capsys.readouterr()
    assert "verdict: not better" in captured.out and "| suite score | current |" in captured.out
    assert "default decision rule chosen on the suite: argmax: suite score" in captured.out  # refused: shown too
    assert "photo temperature" in captured.out  # what was fitted, refused or not
    assert "| tcce_val | v1 |" in captured.out and "is not above current's" in captured.out
    assert "refused to replace the model in" in captured.err and "--force" in captured.err

    assert main(bundle_args(trained, suite_file, folder, "--force", "--decision", "balanced", "--name", "v9")) == 0
    assert "although the verdict is not better: --force" in capsys.readouterr().out
    assert sorted(os.listdir(folder)) == ["msfer_fer2013.json", "msfer_fer2013.pt"]
    record = json.loads((folder / "msfer_fer2013.json").read_text())
    # the chosen default decision rule is the record's and the model's own: the API uses it unless told otherwise
    assert record["decision"]["default"] == "balanced"
    assert EmotionRecognizer(folder / "msfer_fer2013.pt").decision == "balanced"
    assert record["name"] == "v9" and EmotionRecognizer(folder).model_name == "v9"
    assert record["verdict"]["sets"][0]["against"] == "current"
    # where the model before it came from
    assert record["replaced"] == {"source": "run/best.pt", "forced": True}
    models = {model["name"]: model["decision"] for model in record["suite"]["models"]}
    before = json.loads((bundled[0] / "msfer_fer2013.json").read_text())["decision"]["default"]
    assert models == {"candidate": "balanced", "current": before}  # each under its own default rule


def test_the_rule_the_suite_chooses_is_written_into_the_model_file(bundled, trained, suite_file, tmp_path,
                                                                   monkeypatch):
    """Where the suite chooses balanced, the exported file is rewritten with it and keeps all else: its weights'
    precision, calibration and config (the tiny model's suite need not choose balanced by itself)."""
    import msfer.inference.bundle as bundling
    from msfer.inference.recognizer import EmotionRecognizer
    from msfer.model.checkpoint import load_checkpoint

    chooses = bundling.choose_decision
    monkeypatch.setattr(bundling, "choose_decision", lambda result, name: ("balanced", chooses(result, name)[1]))
    out = tmp_path / "balanced"
    assert main(bundle_args(trained, suite_file, out)) == 0
    record = json.loads((out / "msfer_fer2013.json").read_text())
    assert record["decision"]["default"] == "balanced" and record["decision"]["chosen_on"] == "suite"
    assert EmotionRecognizer(out / "msfer_fer2013.pt").decision == "balanced"
    assert record["verdict"]["scores"].keys() == {"candidate balanced", "bundled"}  # judged under the chosen rule
    mine, theirs = load_checkpoint(out / "msfer_fer2013.pt"), load_checkpoint(bundled[0] / "msfer_fer2013.pt")
    assert {k: v.dtype for k, v in mine["model"].items()} == {k: v.dtype for k, v in theirs["model"].items()}
    assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in theirs["model"])  # the same run's bundle
    assert {**mine["calibration"], "decision": None, "suite": None} == {**theirs["calibration"], "decision": None,
                                                                        "suite": None}
    # the suite's figures are the chosen rule's
    balanced_row = next(row for row in record["suite"]["rows"]
                        if (row["set"], row["model"]) == ("tcce_val", "candidate balanced"))
    assert mine["calibration"]["suite"] == record["calibration"]["suite"]
    assert mine["calibration"]["suite"]["tcce_val"]["overall_accuracy"] == balanced_row["overall_accuracy"]
    assert mine["config"] == theirs["config"]


def test_a_compared_model_named_as_a_row_of_the_candidate_is_refused_before_any_work(trained, suite_file, tmp_path):
    from msfer.data.suites import load_suite
    from msfer.inference.bundle import bundle

    with pytest.raises(MsferError, match="named 'candidate balanced', a name of the candidate's rows"):
        bundle(trained, load_suite(suite_file), tmp_path / "out", compare=[("candidate balanced", BUNDLED_MODEL)])
    assert not (tmp_path / "out").exists()


def test_the_shipped_model_is_replaced_only_where_out_names_its_folder(trained, suite_file, capsys):
    try:  # no default --out: a bundle never writes over the package's model unless told to
        code = main(["bundle", str(trained), str(suite_file)])
    except SystemExit as stopped:
        code = stopped.code
    assert code == 2 and "--out" in capsys.readouterr().err


def test_annotations_are_refused_for_a_classifier_before_anything_is_written(trained, suite_file, tmp_path, capsys):
    out = tmp_path / "candidate"
    assert main(bundle_args(trained, suite_file, out, "--annotations", str(tmp_path / "a.jsonl"))) == 2
    error = capsys.readouterr().err
    assert "--annotations" in error and "plain classifier" in error
    assert not out.exists()


@pytest.mark.parametrize("case", ["no_run", "no_best", "no_suite", "no_set_root", "no_domain", "calibrate_on_photos",
                                  "out_is_a_file", "out_under_a_file", "no_compare"])
def test_bad_inputs_are_one_line_errors_before_any_work(case, trained, suite_file, tmp_path, capsys):
    """Every input is checked first: a clear error naming it, exit status 2, and no --out folder left behind."""
    empty, a_file = tmp_path / "empty", tmp_path / "a_file"
    empty.mkdir()
    a_file.write_text("not a folder")
    broken = tmp_path / "broken.yaml"
    document = yaml.safe_load(suite_file.read_text())
    document["sets"][1]["root"] = str(tmp_path / "missing_tcce")
    broken.write_text(yaml.safe_dump(document))
    unscored = tmp_path / "unscored.yaml"
    sets = [{**entry, "domain": None} for entry in yaml.safe_load(suite_file.read_text())["sets"]]
    unscored.write_text(yaml.safe_dump({"name": "x", "sets": sets}))
    args = {"run": trained, "suite": suite_file, "--out": tmp_path / "candidate"}
    option, bad, named = {
        "no_run": ("run", tmp_path / "missing_run", tmp_path / "missing_run"),
        "no_best": ("run", empty, empty),
        "no_suite": ("suite", tmp_path / "none.yaml", tmp_path / "none.yaml"),
        "no_set_root": ("suite", broken, "tcce_val"),
        "no_domain": ("suite", unscored, unscored),
        "calibrate_on_photos": ("--calibrate-on", "tcce_val", "tcce_val"),
        "out_is_a_file": ("--out", a_file, a_file),
        "out_under_a_file": ("--out", a_file / "candidate", a_file / "candidate"),
        "no_compare": ("--compare", tmp_path / "old.pt", tmp_path / "old.pt"),
    }[case]
    args[option] = bad
    argv = ["bundle", str(args.pop("run")), str(args.pop("suite"))] + [str(x) for item in args.items() for x in item]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert str(named) in error and len(error.strip().splitlines()) == 1  # one line, no usage block or traceback
    assert a_file.read_text() == "not a folder" and not (tmp_path / "candidate").exists()


@pytest.mark.parametrize("out_case", ["made_with_its_parent", "there_before"])
def test_a_failed_bundle_leaves_no_folder_it_made(out_case, trained, suite_file, tmp_path, monkeypatch):
    """A bundle that fails part way (here, making the candidate) removes the --out folders it made, parents too, and
    keeps one that was there before, even empty."""
    import msfer.inference.bundle as bundling

    out = tmp_path / "parent" / "candidate" if out_case == "made_with_its_parent" else tmp_path / "existing"
    if out_case == "there_before":
        out.mkdir()

    def fails(*args, **kwargs):
        raise RuntimeError("the detector broke")

    monkeypatch.setattr(bundling, "make_candidate", fails)
    with pytest.raises(RuntimeError, match="the detector broke"):
        main(bundle_args(trained, suite_file, out))
    if out_case == "there_before":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not (tmp_path / "parent").exists()


def fake_result(correct: dict[str, dict[str, list[int]]], domains: dict[str, str | None]) -> dict:
    """A benchmark result as the verdict reads it: per set, each model's per-image correctness; scores as the
    suite's mean over domains."""
    from msfer.data.suites import Suite, SuiteSet
    from msfer.inference.benchmark import suite_score

    suite = Suite("fake", tuple(SuiteSet(name, "folder", Path(name), "crops", domain=domain)
                                for name, domain in domains.items()))
    models = next(iter(correct.values())).keys()
    scores = [{"model": m, "score_overall": suite_score(suite, {s: np.mean(correct[s][m]) for s in correct})}
              for m in models] if suite.domains else []
    return {"suite": {"name": "fake", "sets": [{"name": n, "domain": d} for n, d in domains.items()]},
            "scores": scores,
            "predictions": {s: {"correct": {m: np.asarray(v, bool) for m, v in per.items()}}
                            for s, per in correct.items()}}


def test_the_verdict_needs_a_higher_score_and_no_set_worse_by_more_than_one_standard_error():
    ones, domains = [1] * 10, {"crops": "crops", "photos": "photos", "aside": None}
    # +1 image on crops, -1 on photos (10 images each): the score ties, so not better
    tie = {"crops": {"candidate": [1] * 6 + [0] * 4, "old": [1] * 5 + [0] * 5},
           "photos": {"candidate": [1, 1, 1, 0, 1, 0, 0, 0, 0, 0], "old": [1, 1, 1, 1, 0, 1, 0, 0, 0, 0]},
           "aside": {"candidate": ones, "old": [0] * 10}}
    verdict = suite_verdict(fake_result(tie, domains), "candidate", ["old"])
    assert verdict["verdict"] == "not better" and "is not above old's" in verdict["why"]
    assert [c["set"] for c in verdict["sets"]] == ["crops", "photos"]  # a set without a domain is not judged
    # +3 on crops, -1 on photos: a higher score, and -10 points is within one paired standard error (about 18)
    gain = {**tie, "crops": {"candidate": [1] * 8 + [0] * 2, "old": [1] * 5 + [0] * 5}}
    verdict = suite_verdict(fake_result(gain, domains), "candidate", ["old"])
    photos = verdict["sets"][1]
    assert photos["difference"] == pytest.approx(-0.1) and photos["standard_error"] == pytest.approx(0.1795, abs=1e-4)
    assert verdict["verdict"] == "better" and verdict["scores"]["candidate"] > verdict["scores"]["old"]
    # the same gain, but photos lose four images the old model had right: beyond one standard error
    loss = {**gain, "photos": {"candidate": [1] * 1 + [0] * 9, "old": [1] * 5 + [0] * 5}}
    loss["crops"] = {"candidate": ones, "old": [0] * 10}  # the score still rises
    verdict = suite_verdict(fake_result(loss, domains), "candidate", ["old"])
    assert verdict["verdict"] == "not better" and "photos: -40.0 points against old" in verdict["why"]
    # every compared model counts for the sets, the first for the score
    three = {s: {**per, "v2": per["candidate"]} for s, per in gain.items()}
    three["photos"]["v2"] = [1] * 9 + [0]
    verdict = suite_verdict(fake_result(three, domains), "candidate", ["old", "v2"])
    assert verdict["verdict"] == "not better" and "against v2" in verdict["why"] and "against old" not in verdict["why"]
    with pytest.raises(MsferError, match="no set with a domain"):
        suite_verdict(fake_result(tie, {"crops": None, "photos": None, "aside": None}), "candidate", ["old"])


def rule_result(figures: dict[str, tuple[float, float, list[float]]]) -> dict:
    """A benchmark result as choose_decision reads it: per rule, the candidate's suite scores (overall, mean class)
    and its photo sets' mean class accuracies, beside a crops row and a row outside the score."""
    rows, scores = [], []
    for rule, (overall, mean_class, photos) in figures.items():
        label = f"candidate {rule}"
        scores.append({"model": label, "score_overall": overall, "score_mean_class": mean_class})
        rows += [{"model": label, "mode": "crops", "domain": "crops", "mean_class_accuracy": 0.9},
                 {"model": label, "mode": "photos", "domain": None, "mean_class_accuracy": 0.0}]
        rows += [{"model": label, "mode": "photos", "domain": "photos", "mean_class_accuracy": value}
                 for value in photos]
    return {"rows": rows, "scores": scores}


@pytest.mark.parametrize("argmax, balanced, chosen", [
    ((0.55, 0.54, [0.50, 0.40]), (0.56, 0.56, [0.52, 0.41]), "balanced"),  # higher score, photos gain
    ((0.55, 0.54, [0.50, 0.40]), (0.54, 0.57, [0.52, 0.41]), "argmax"),  # photos gain, the score falls
    ((0.55, 0.54, [0.50, 0.40]), (0.56, 0.56, [0.48, 0.40]), "argmax"),  # the score rises, photos lose class accuracy
    ((0.55, 0.54, [0.50, 0.40]), (0.55, 0.55, [0.52, 0.41]), "balanced"),  # a tied score: mean class decides
    ((0.55, 0.54, []), (0.56, 0.55, []), "balanced"),  # no photo set: the suite's mean class score decides
    ((0.55, 0.54, []), (0.56, 0.53, []), "argmax"),
])
def test_the_default_rule_is_chosen_on_the_whole_suite(argmax, balanced, chosen):
    from msfer.inference.bundle import choose_decision

    rule, figures = choose_decision(rule_result({"argmax": argmax, "balanced": balanced}), "candidate")
    assert rule == chosen
    assert figures["balanced"]["score_overall"] == balanced[0]
    assert figures["balanced"]["photos_mean_class"] == (pytest.approx(np.mean(balanced[2])) if balanced[2] else None)
    with pytest.raises(MsferError, match="no model 'candidate balanced'"):
        choose_decision(rule_result({"argmax": argmax}), "candidate")


def test_the_paired_standard_error():
    a, b = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 0])
    difference = a - b
    assert paired_standard_error(a, b) == pytest.approx(difference.std(ddof=1) / np.sqrt(5))
    assert paired_standard_error(a, a) == 0.0 and paired_standard_error(a[:1], b[:1]) == 0.0


def test_a_bundle_is_named_after_its_checkpoint_or_its_run_folder(tmp_path):
    from msfer.inference.bundle import default_name

    run = tmp_path / "runs" / "v7"
    run.mkdir(parents=True)
    (run / "last.pt").touch()
    (tmp_path / "model.pt").touch()
    assert default_name(run, {}) == default_name(run / "last.pt", {}) == "v7"
    assert default_name(tmp_path / "model.pt", {}) == "model"  # no run folder: the file's stem
    assert default_name(run / "last.pt", {"name": "v3"}) == "v3"  # a bundled model bundled again keeps its name


def test_the_per_set_calibration_leaves_out_the_calibration_set_and_sets_without_a_face():
    from msfer.inference.bundle import suite_calibration

    def row(set_name, model, domain="photos", ece=0.1):
        return {"set": set_name, "model": model, "domain": domain, "n": 10, "missed": 1, "ece": ece,
                "ece_floor_95": 0.2, "overall_accuracy": 0.5}

    result = {"rows": [row("crops", "c argmax"), row("photos", "c argmax"), row("photos", "c balanced", ece=0.3),
                       row("aside", "c argmax", domain=None), row("empty", "c argmax", ece=None)]}
    figures = suite_calibration(result, "c argmax", calibrated_on="crops")
    assert figures == {"photos": {"domain": "photos", "n": 10, "missed": 1, "ece": 0.1, "ece_floor_95": 0.2,
                                  "overall_accuracy": 0.5}}
