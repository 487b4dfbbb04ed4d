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
