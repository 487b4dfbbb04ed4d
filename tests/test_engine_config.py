import re
from pathlib import Path

import pytest
import yaml

from msfer.engine.config import DEFAULTS, load_config, save_config
from msfer.errors import MsferError


def test_base_inheritance_overrides_and_save(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: msfer_mobilenetv2, scales: [1, 2, 3]}\ntrain: {epochs: 10, lr: 0.001}\n")
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


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    from msfer.model import build_model

    config = load_config(path, ["data.root=/data/fer2013"])
    model = build_model({**config["model"], "pretrained": False})
    assert model.num_classes == 7 and model.input_size == config["model"].get("input_size", model.input_size)


def test_a_key_that_does_nothing_is_an_error():
    # train.label_smoothing never acted (model.label_smoothing does): setting it must not pass silently ...
    with pytest.raises(MsferError, match=re.escape("'train.label_smoothing' does nothing: set model.label_smoothing=0.1")):
        load_config(overrides=["train.label_smoothing=0.1"])
    # ... while the saved configs of earlier runs, which hold it at its inert 0.0, still load (for --resume).
    config = load_config(base={"train": {"label_smoothing": 0.0, "epochs": 3}})
    assert "label_smoothing" not in config["train"] and config["train"]["epochs"] == 3


def test_holdout_is_the_papers_stratified_split_when_asked_for():
    config = load_config(overrides=["data.val_split=null", "data.holdout={fraction: 1/6, seed: 3}"])
    assert config["data"]["holdout"] == {"fraction": pytest.approx(1 / 6), "seed": 3}
    assert load_config(overrides=["data.val_split=null", "data.holdout.fraction=0.2"])["data"]["holdout"] == \
        {"fraction": 0.2, "seed": 0}
    assert load_config()["data"]["holdout"] is None


@pytest.mark.parametrize("overrides, message", [
    (["data.holdout.fraction=1/6"], "data.val_split='public_test' names one too"),
    (["data.val_split=null"], "data.val_split is null"),
    (["data.val_split=null", "data.holdout.fraction=1.5"], "data.holdout.fraction=1.5 must be a number between 0 and 1"),
    (["data.val_split=null", "data.holdout.fraction=a/b"], "data.holdout.fraction='a/b' must be a number"),
    (["data.val_split=null", "data.holdout.fraction=1/0"], "data.holdout.fraction='1/0' must be a number"),
    (["data.val_split=null", "data.holdout={seed: 1}"], "must be null or a mapping"),
    (["data.val_split=null", "data.holdout={fraction: 0.2, sede: 1}"], "must be null or a mapping"),
    (["data.val_split=null", "data.holdout={fraction: 0.2, seed: 0.5}"], "data.holdout.seed=0.5 must be an integer"),
])
def test_bad_holdouts_are_clear_errors(overrides, message):
    with pytest.raises(MsferError, match=re.escape(message)):
        load_config(overrides=overrides)
