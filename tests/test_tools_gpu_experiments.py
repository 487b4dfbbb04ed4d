"""tools/gpu_experiments.py: what it runs on the GPU loads as the recipe's config, the training images it carries
are those training makes, its epoch plans fit the time given, and ``prepare`` never deletes a folder it did not
write. (The whole call is rehearsed on a CPU with ``--smoke``.)"""
import argparse
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msfer.data.readers import read_dataset
from msfer.engine.config import load_config
from msfer.engine.datasets import FaceDataset
from msfer.faces.crop import CropRule
from msfer.labels import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_experiments", ROOT / "tools" / "gpu_experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def annotated_photos(root: Path) -> Path:
    """``root/photos/train/<emotion>/<i>.png``: 7 x 2 colour photos (80 x 64) with a bright face box, annotated as
    msfer annotate writes it, but one photo never annotated and one without a face. Returns the annotation file."""
    records = []
    ramp = np.add.outer(np.arange(64), np.arange(80)) // 3  # a smooth background, as photos mostly have
    for k, name in enumerate(EMOTIONS):
        (root / "photos" / "train" / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.repeat((ramp + 10 * i)[..., None], 3, axis=2).astype(np.uint8)
            pixels[12:52, 30:70] = (120 + 15 * k, 90, 40 + 20 * i)
            Image.fromarray(pixels).save(root / "photos" / "train" / name / f"{i}.png")
            if (k, i) == (0, 1):
                continue
            ok = (k, i) != (1, 1)
            x1, y1, w, h = 30, 12, 40, 40
            marks = [[x1 + 0.3 * w, y1 + 0.4 * h], [x1 + 0.7 * w, y1 + 0.4 * h], [x1 + 0.5 * w, y1 + 0.6 * h],
                     [x1 + 0.35 * w, y1 + 0.8 * h], [x1 + 0.65 * w, y1 + 0.8 * h]]
            records.append({"id": f"train/{name}/{i}.png", "split": "train", "label": k, "width": 80, "height": 64,
                            "status": "ok" if ok else "no_face", "regions": {"face": [x1, y1, x1 + w, y1 + h]}
                            if ok else {}, "landmarks": marks if ok else None, "score": 0.99 if ok else None})
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "regions.jsonl"


def test_the_carried_training_images_are_the_ones_training_cuts(script, tmp_path):
    annotations = annotated_photos(tmp_path)
    entry = {"format": "folder", "root": str(tmp_path / "photos"), "split": "train", "weight": 0.1, "crop": True,
             "annotations": str(annotations), "reader_options": {}}
    config = load_config(ROOT / script.RECIPE_CONFIG, ["data.image_size=48"])
    assert script.extra_train_images(entry, config, tmp_path / "carried", quality=95) == 12  # 14 less 2 unusable
    from msfer.regions.annotations import load_annotations

    samples = read_dataset(entry["root"], "folder").samples
    training = FaceDataset(samples, 48, (), load_annotations(annotations),
                           crop_rule=CropRule.from_dict(config["data"]["crop_rule"]))
    carried = FaceDataset(read_dataset(tmp_path / "carried", "folder").samples, 48, ())
    assert sorted(carried.labels.tolist()) == sorted(training.labels.tolist())
    def as_jpeg(pixels: np.ndarray) -> np.ndarray:
        data = io.BytesIO()
        Image.fromarray(pixels.transpose(1, 2, 0)).save(data, format="JPEG", quality=95)
        return np.asarray(Image.open(data).convert("RGB")).transpose(2, 0, 1)

    # JPEG at quality 95 is the only difference
    expected = sorted((int(training.labels[i]), as_jpeg(training.decode(i)[0]).tobytes()) for i in range(len(training)))
    found = sorted((int(carried.labels[i]), carried.decode(i)[0].tobytes()) for i in range(len(carried)))
    assert found == expected


@pytest.fixture(scope="module")
def carry(script, tmp_path_factory) -> Path:
    """A carry that ``prepare recipe`` wrote: configs/v3.yaml at 64 px with one extra set of annotated photos."""
    root = tmp_path_factory.mktemp("prepare")
    annotations = annotated_photos(root)
    archive = root / "fer2013.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = io.BytesIO()
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(data, format="PNG")
        info = tarfile.TarInfo("fer2013/train/happy/0.png")
        info.size = len(data.getvalue())
        tar.addfile(info, io.BytesIO(data.getvalue()))
    extra = (f"data.extra_train=[{{format: folder, root: {root / 'photos'}, split: train, weight: 0.1, "
             f"crop: true, annotations: {annotations}}}]")
    args = argparse.Namespace(what="recipe", carry=root / "carry", fer2013=archive, tcce=None, annotations=None,
                              config=ROOT / script.RECIPE_CONFIG, quality=90,
                              set=[extra, "model.input_size=64", "data.image_size=64"])
    assert script.prepare(args) == 0
    return root / "carry"


def test_prepare_recipe_packs_what_run_needs(carry):
    record = json.loads((carry / "carry.json").read_text())
    [extra] = record["extra_train"]
    assert (extra["carried"], extra["split"], extra["weight"], extra["images"]) == ("extra/0", "train", 0.1, 12)
    assert extra["crop"] is True and extra["root"].endswith("photos")  # where the images came from
    assert len(list((carry / "extra" / "0" / "train").rglob("*.jpg"))) == 12
    assert all((carry / name).is_file() for name in ("fer2013.tar.gz", "mobilenet_v2_half.pth", "config.yaml"))
    assert not carry.with_name("carry.partial").exists()


def test_the_run_trains_the_carried_recipe_with_the_gpu_settings_and_the_planned_epochs(script, carry, tmp_path):
    record = json.loads((carry / "carry.json").read_text())
    overrides = script.recipe_overrides(tmp_path / "data", carry, record, script.RECIPE_GPU)
    arguments = script.train_arguments(carry, tmp_path / "run", overrides, epochs=7, seconds=420)
    assert arguments[:5] == ["train", "--config", str(carry / "config.yaml"), "--output-dir", str(tmp_path / "run")]
    config = load_config(arguments[2], arguments[5:])
    plain = load_config(ROOT / script.RECIPE_CONFIG, record["set"])
    assert config["model"] == plain["model"] and config["model"]["input_size"] == 64
    assert config["data"]["crop_rule"] == plain["data"]["crop_rule"] and config["data"]["image_size"] == 64
    assert config["data"]["augment"] == plain["data"]["augment"] and config["train"]["lr"] == 4.0e-3
    assert config["train"]["epochs"] == 7 and config["train"]["max_minutes"] == 7.0
    assert config["train"]["batch_size"] == 256 and config["train"]["amp"] == "bf16"
    # the EMA keeps its horizon in epochs: 4x the batch, a quarter of the steps
    steps = lambda decay: 1 / (1 - decay)  # noqa: E731
    assert steps(config["train"]["ema"]) * 256 == pytest.approx(steps(plain["train"]["ema"]) * 64, rel=0.01)
    [extra] = config["data"]["extra_train"]
    assert extra["root"] == str(carry / "extra" / "0") and extra["crop"] is False and extra["weight"] == 0.1
    assert config["data"]["photo_val"] is None and config["data"]["root"] == str(tmp_path / "data" / "fer2013")


@pytest.mark.parametrize("given, refused", [
    (["train.lr=1e-3"], "train.lr"), (["train.epochs=30"], "train.epochs"), (["train={ema: 0.99}"], "train.ema"),
    (["train.device=cpu"], "train.device"), (["model.name=msfer_mobilenetv2"], "model.name"),
    (["model.name=classifier_faceres"], "model.name"), (["data.annotations=regions.jsonl"], "data.annotations"),
    (["train.bogus=1"], "train.bogus"), (["model.input_sise=160"], "input_sise"),
    (["train.weight_decay=0.1", "train=1"], "train"),
])
def test_prepare_refuses_a_recipe_the_run_would_change_or_could_not_train(script, tmp_path, given, refused):
    archive = tmp_path / "fer2013.tar.gz"
    archive.write_bytes(b"")
    args = argparse.Namespace(what="recipe", carry=tmp_path / "carry", fer2013=archive, tcce=None, annotations=None,
                              config=ROOT / script.RECIPE_CONFIG, set=given, quality=95)
    with pytest.raises(SystemExit, match=refused.replace(".", r"\.")):
        script.prepare(args)
    assert not (tmp_path / "carry").exists() and not (tmp_path / "carry.partial").exists()


def test_the_ablation_settings_load_for_every_row(script):
    for _, config, _ in script.ABLATIONS:
        loaded = load_config(ROOT / config, [f"{k}={v}" for k, v in script.ABLATION_GPU.items()])
        assert loaded["train"]["batch_size"] == 256


@pytest.mark.parametrize("rate", [300.0, 3000.0, 30000.0])
def test_epoch_plans_fit_the_seconds_given(script, rate):
    seconds = 300.0
    images = script.TRAIN_IMAGES + 1400
    epochs = script.plan_recipe(rate, seconds, max_epochs=1000, images=images)
    assert epochs == 1 or epochs * script.epoch_seconds(rate, images) <= seconds
    assert script.plan_recipe(rate, seconds, max_epochs=3, images=images) <= 3
    rates = {config: rate for _, config, _ in script.ABLATIONS}
    per_row = script.plan_ablation(rates, seconds, max_epochs=1000)
    assert per_row == 1 or per_row * len(script.ABLATIONS) * script.epoch_seconds(rate) <= seconds


def test_prepare_refuses_a_folder_it_did_not_write(script, tmp_path):
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "keep.txt").write_text("someone's file")
    archive = tmp_path / "fer2013.tar.gz"
    archive.write_bytes(b"")
    args = argparse.Namespace(what="ablation", carry=carry, fer2013=archive, tcce=None, annotations=archive,
                              config=None, set=[], quality=95)
    with pytest.raises(SystemExit, match="prepare did not write"):
        script.prepare(args)
    assert (carry / "keep.txt").read_text() == "someone's file"


def test_a_whole_section_override_is_refused_only_for_the_keys_the_run_sets(script):
    config = script.recipe_config(ROOT / script.RECIPE_CONFIG, ["train={seed: 1}", "data={augment: {erase: 0.5}}"])
    assert config["train"]["seed"] == 1 and config["data"]["augment"]["erase"] == 0.5
    assert config["train"]["lr"] == 2.0e-3  # the section is merged, as msfer train merges it


def test_a_failed_prepare_leaves_the_earlier_carry_as_it_was(script, carry, tmp_path):
    before = {f.relative_to(carry): f.read_bytes() for f in carry.rglob("*") if f.is_file()}
    record = json.loads((carry / "carry.json").read_text())
    empty = (f"data.extra_train=[{{format: folder, root: {record['extra_train'][0]['root']}, split: val, "
             "weight: 0.1, crop: false}]")  # the photos have no val split
    args = argparse.Namespace(what="recipe", carry=carry, fer2013=carry / "fer2013.tar.gz", tcce=None,
                              annotations=None, config=ROOT / script.RECIPE_CONFIG, quality=90, set=[empty])
    with pytest.raises(SystemExit, match="no training images"):
        script.prepare(args)
    assert {f.relative_to(carry): f.read_bytes() for f in carry.rglob("*") if f.is_file()} == before
    assert not carry.with_name("carry.partial").exists() and not carry.with_name("carry.earlier").exists()
    with pytest.raises(SystemExit, match="--quality"):
        script.prepare(argparse.Namespace(**{**vars(args), "set": [], "quality": 0}))


def test_run_refuses_a_carry_an_older_prepare_wrote(script, tmp_path):
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "carry.json").write_text(json.dumps({"what": "recipe", "extra_train": []}))
    args = argparse.Namespace(what="recipe", carry=carry, out=tmp_path / "out", work=tmp_path / "work", minutes=1.0,
                              max_epochs=3, smoke=True)
    with pytest.raises(SystemExit, match="prepare recipe' again"):
        script.run(args)
