import re
from pathlib import Path

import pytest
import yaml

from msfer.engine.config import DEFAULTS, load_config, save_config
from msfer.errors import MsferError


def test_base_inheritance_overrides_and_save(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: msfer_mobilenetv2, scales: [1, 2, 3]}\n"
                                        "train: {epochs: 10, lr: 0.001}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel: {scales: [3]}\ntrain: {epochs: 5}\n")
    config = load_config(tmp_path / "child.yaml", ["train.lr=3e-4", "data.augment.scale=[0.5, 1.0]", "train.ema=null"])
    assert config["model"] == {"name": "msfer_mobilenetv2", "scales": [3]}  # lists replace, mappings merge
    assert config["train"]["epochs"] == 5 and config["train"]["lr"] == pytest.approx(3e-4)
    assert config["data"]["augment"]["scale"] == [0.5, 1.0]
    assert config["data"]["augment"]["flip"] == DEFAULTS["data"]["augment"]["flip"]
    save_config(config, tmp_path)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config


@pytest.mark.parametrize("override, message", [
    ("train.lr_rate=0.1", "unknown config key 'train.lr_rate'"),
    ("trian.lr=0.1", "unknown config key 'trian'"),
    ("train.optimizer=adagrad", "train.optimizer='adagrad' is not one of"),
    ("train.lr", "not of the form key.sub=value"),
    ("train.epochs.x=1", "train.epochs={'x': 1} has the wrong type: expected a number"),
    ("train.amp=true", "train.amp=True is not one of"),
    ("data.cache_images=yes please", "data.cache_images='yes please' has the wrong type: expected a boolean"),
])
def test_bad_keys_and_values_are_clear_errors(override, message):
    with pytest.raises(MsferError, match=re.escape(message)):
        load_config(overrides=[override])


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(MsferError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(MsferError, match="cycle"):
        load_config(tmp_path / "a.yaml")


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDIES = CONFIGS / "studies"  # study files (scripts/study.py): rows of overrides on a config, not configs
SUITES = CONFIGS / "benchmarks"  # suites of msfer benchmark (tests/test_inference_benchmark.py reads them)


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if not {STUDIES, SUITES} & set(p.parents)),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    from msfer.model import build_model

    config = load_config(path, ["data.root=/data/fer2013"])
    model = build_model({**config["model"], "pretrained": False})
    assert model.num_classes == 7 and model.input_size == config["model"].get("input_size", model.input_size)


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_row_of_every_study_loads_and_builds_its_model(path):
    """Each row's config and overrides (its ${NAME} paths filled as scripts/study.py fills them) are valid
    and build the row's model."""
    import importlib.util
    import re

    import yaml

    from msfer.model import build_model

    spec = importlib.util.spec_from_file_location("study", CONFIGS.parent / "scripts" / "study.py")
    study_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_script)
    study = yaml.safe_load(path.read_text())
    for row in study["rows"]:
        overrides = [str(o) for o in [*study.get("overrides", []), *row.get("overrides", [])]]
        paths = {name: f"/data/{name}" for o in overrides for name in study_script.PLACEHOLDER.findall(o)}
        assert not [o for o in overrides if re.search(r"(?<!\$)\{\w+\}", o)], "a placeholder is written ${NAME}"
        overrides = study_script.fill_all(overrides, paths)
        config = load_config(path.parent / row.get("config", study["config"]), ["data.root=/data/fer2013", *overrides])
        model = build_model({**config["model"], "pretrained": False})
        assert model.num_classes == 7, row["name"]


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "config train.epochs=0 is out of range: expected a whole number >= 1"),
    ("train.epochs=-1", "config train.epochs=-1 is out of range"),
    ("train.epochs=2.5", "config train.epochs=2.5 has the wrong type: expected a whole number >= 1"),
    ("train.epochs=true", "config train.epochs=True has the wrong type"),
    ("train.batch_size=0", "config train.batch_size=0 is out of range"),
    ("train.lr=-1", "config train.lr=-1 is out of range: expected a number > 0"),
    ("train.lr=0", "config train.lr=0 is out of range"),
    ("train.lr=.nan", "config train.lr=nan is out of range"),
    ("train.lr=abc", "config train.lr='abc' has the wrong type"),
    ("train.weight_decay=-0.1", "config train.weight_decay=-0.1 is out of range"),
    ("train.momentum=1", "config train.momentum=1 is out of range"),
    ("train.warmup_epochs=-1", "config train.warmup_epochs=-1 is out of range"),
    ("train.grad_clip=0", "config train.grad_clip=0 is out of range: expected a number > 0 or null"),
    ("train.ema=1.5", "config train.ema=1.5 is out of range"),
    ("train.seed=-1", "config train.seed=-1 is out of range"),
    ("train.max_minutes=-5", "config train.max_minutes=-5 is out of range"),
    ("train.val_every=0", "config train.val_every=0 is out of range"),
    ("eval.batch_size=0", "config eval.batch_size=0 is out of range"),
    ("data.limit=abc", "config data.limit='abc' has the wrong type: expected a whole number >= 1 or null"),
    ("data.limit=0", "config data.limit=0 is out of range"),
    ("data.image_size=-48", "config data.image_size=-48 is out of range"),
    ("data.num_workers=-1", "config data.num_workers=-1 is out of range"),
    ("data.augment.flip=2", "config data.augment.flip=2 is out of range: expected a number in [0, 1]"),
    ("data.augment.rotation=-10", "config data.augment.rotation=-10 is out of range"),
    ("data.augment.scale=[1.0, 0.5]", "config data.augment.scale=[1.0, 0.5] is out of range"),
    ("data.augment.scale=[0.5]", "config data.augment.scale=[0.5] has the wrong type"),
    ("data.augment.erase_area=[0, 0.2]", "config data.augment.erase_area=[0, 0.2] is out of range"),
    ("data.augment.hue=0.6", "config data.augment.hue=0.6 is out of range: expected a number in [0, 0.5]"),
    ("data.augment.jpeg=1.5", "config data.augment.jpeg=1.5 is out of range"),
    ("data.augment.jpeg_quality=[0, 90]", "config data.augment.jpeg_quality=[0, 90] is out of range"),
    ("data.augment.jpeg_quality=[30.5, 90]",
     "config data.augment.jpeg_quality=[30.5, 90] is out of range: expected a list [low, high] with low <= high, "
     "each a whole number in [1, 100]"),
    ("data.augment.blur_sigma=[0, 1]", "config data.augment.blur_sigma=[0, 1] is out of range"),
    ("data.augment.noise_std=[10, 2]", "config data.augment.noise_std=[10, 2] is out of range"),
    ("data.augment.erase_ratio=[0, 3]", "config data.augment.erase_ratio=[0, 3] is out of range"),
    ("data.root=5", "config data.root=5 has the wrong type: expected a path or null"),
])
def test_out_of_range_values_are_clear_errors(override, message):
    with pytest.raises(MsferError, match=re.escape(message)):
        load_config(overrides=[override])


@pytest.mark.parametrize("override, message", [
    ("model.input_size=0", "config model.input_size=0 is out of range: expected a whole number >= 8"),
    ("model.input_size=abc", "config model.input_size='abc' has the wrong type"),
    ("model.dropout=1.5", "config model.dropout=1.5 is out of range"),
    ("model.label_smoothing=-0.1", "config model.label_smoothing=-0.1 is out of range"),
    ("model.rois_per_image=0", "config model.rois_per_image=0 is out of range"),
    ("model.std=[0.2, 0, 0.2]", "config model.std=[0.2, 0, 0.2] is out of range"),
    ("model.class_weights=[1, 2]",
     "config model.class_weights=[1, 2] has the wrong type: expected a list of 7 numbers"),
    ("model.pretrained=yes please", "config model.pretrained='yes please' has the wrong type: expected true or false"),
])
def test_out_of_range_model_values_are_clear_errors(override, message):
    from msfer.model import build_model

    config = load_config(overrides=["model.name=msfer_mobilenetv2", override])
    with pytest.raises(MsferError, match=re.escape(message)):
        build_model(config["model"])


@pytest.mark.parametrize("override", ["train.epochs=0", "train.epochs=-1", "train.epochs=2.5", "train.batch_size=0",
                                      "train.lr=-1", "data.limit=abc", "model.input_size=0"])
def test_train_cli_exits_2_naming_the_key(tmp_path, override, capsys):
    from msfer.cli import main as cli

    config = tmp_path / "run.yaml"
    config.write_text("model: {name: classifier_mobilenetv2, pretrained: false}\ntrain: {device: cpu}\n")
    assert cli(["train", "--config", str(config), "--output-dir", str(tmp_path / "run"), "data.root=/nowhere",
                override]) == 2
    error = capsys.readouterr().err
    assert error.startswith("msfer train: error: config ") and override.split("=")[0] in error
    assert "Traceback" not in error


def test_train_cli_process_exits_2_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    config.write_text("train: {epochs: 3}\n")
    source = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "msfer.cli", "train", "--config", str(config), "train.epochs=0"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("msfer train: error: config train.epochs=0 is out of range: "
                                     "expected a whole number >= 1")


def test_a_key_that_does_nothing_is_an_error():
    # train.label_smoothing never acted (model.label_smoothing does): setting it must not pass silently ...
    message = "'train.label_smoothing' does nothing: set model.label_smoothing=0.1"
    with pytest.raises(MsferError, match=re.escape(message)):
        load_config(overrides=["train.label_smoothing=0.1"])
    # ... while the saved configs of earlier runs, which hold it at its inert 0.0, still load (for --resume).
    config = load_config(base={"train": {"label_smoothing": 0.0, "epochs": 3}})
    assert "label_smoothing" not in config["train"] and config["train"]["epochs"] == 3


def test_the_region_source_has_one_name_and_old_configs_still_load(tmp_path):
    assert load_config()["eval"]["region_source"] is None  # the model's own regions
    assert load_config(overrides=["eval.region_source=pseudo"])["eval"]["region_source"] == "pseudo"
    # configs saved before the rename (a checkpoint's, for --resume) held eval.regions: learned | pseudo
    for old, new in (("learned", None), ("model", None), ("pseudo", "pseudo")):
        config = load_config(base={"eval": {"regions": old, "tta": True}})
        assert config["eval"]["region_source"] == new and "regions" not in config["eval"], old
        assert config["eval"]["tta"] is True
    # a later layer's new key wins over an earlier layer's old one; a YAML file is translated too
    assert load_config(overrides=["eval.region_source=null"],
                       base={"eval": {"regions": "pseudo"}})["eval"]["region_source"] is None
    (tmp_path / "old.yaml").write_text("eval: {regions: pseudo}\n")
    assert load_config(tmp_path / "old.yaml")["eval"]["region_source"] == "pseudo"
    with pytest.raises(MsferError, match=re.escape("eval.regions='detector' is not one of")):
        load_config(base={"eval": {"regions": "detector"}})
    with pytest.raises(MsferError, match=re.escape("both eval.regions='pseudo' and eval.region_source=None")):
        load_config(base={"eval": {"regions": "pseudo", "region_source": None}})
    with pytest.raises(MsferError, match="is not one of None, 'pseudo'"):
        load_config(overrides=["eval.region_source=learned"])


def test_holdout_is_the_papers_stratified_split_when_asked_for():
    config = load_config(overrides=["data.val_split=null", "data.holdout={fraction: 1/6, seed: 3}"])
    assert config["data"]["holdout"] == {"fraction": pytest.approx(1 / 6), "seed": 3}
    assert load_config(overrides=["data.val_split=null", "data.holdout.fraction=0.2"])["data"]["holdout"] == \
        {"fraction": 0.2, "seed": 0}
    assert load_config()["data"]["holdout"] is None


@pytest.mark.parametrize("overrides, message", [
    (["data.holdout.fraction=1/6"], "data.val_split='public_test' names one too"),
    (["data.val_split=null"], "data.val_split is null"),
    (["data.val_split=null", "data.holdout.fraction=1.5"],
     "data.holdout.fraction=1.5 must be a number between 0 and 1"),
    (["data.val_split=null", "data.holdout.fraction=a/b"], "data.holdout.fraction='a/b' must be a number"),
    (["data.val_split=null", "data.holdout.fraction=1/0"], "data.holdout.fraction='1/0' must be a number"),
    (["data.val_split=null", "data.holdout={seed: 1}"], "must be null or a mapping"),
    (["data.val_split=null", "data.holdout={fraction: 0.2, sede: 1}"], "must be null or a mapping"),
    (["data.val_split=null", "data.holdout={fraction: 0.2, seed: 0.5}"], "data.holdout.seed=0.5 must be an integer"),
])
def test_bad_holdouts_are_clear_errors(overrides, message):
    with pytest.raises(MsferError, match=re.escape(message)):
        load_config(overrides=overrides)
