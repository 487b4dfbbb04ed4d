"""tools/gpu_experiments.py: what it runs on the GPU loads as a config, its epoch plans fit the time given, and
``prepare`` never deletes a folder it did not write. (The whole call is rehearsed on a CPU with ``--smoke``.)"""
import argparse
import importlib.util
from pathlib import Path

import pytest

from msfer.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_experiments", ROOT / "tools" / "gpu_experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_v2_on_the_gpu_is_v2_with_the_gpu_settings_and_the_carried_data(script, tmp_path):
    overrides = script.v2_overrides(tmp_path / "data", tmp_path / "carry", script.V2_GPU)
    config = load_config(ROOT / script.V2_CONFIG, [f"{k}={v}" for k, v in overrides.items()])
    plain = load_config(ROOT / script.V2_CONFIG)
    assert config["model"] == plain["model"] and config["data"]["crop_rule"] == plain["data"]["crop_rule"]
    assert config["data"]["augment"] == plain["data"]["augment"]
    assert config["train"]["batch_size"] == 256 and config["train"]["amp"] == "bf16"
    # the EMA keeps its horizon in epochs: 4x the batch, a quarter of the steps
    steps = lambda decay: 1 / (1 - decay)  # noqa: E731
    assert steps(config["train"]["ema"]) * 256 == pytest.approx(steps(plain["train"]["ema"]) * 64, rel=0.01)
    [extra] = config["data"]["extra_train"]
    assert extra["root"] == str(tmp_path / "carry" / "tcce_crops") and extra["crop"] is False
    assert extra["weight"] == plain["data"]["extra_train"][0]["weight"]
    assert config["data"]["photo_val"]["root"] == str(tmp_path / "carry" / "tcce")


def test_the_ablation_settings_load_for_every_row(script):
    for _, config, _ in script.ABLATIONS:
        loaded = load_config(ROOT / config, [f"{k}={v}" for k, v in script.ABLATION_GPU.items()])
        assert loaded["train"]["batch_size"] == 256


@pytest.mark.parametrize("rate", [300.0, 3000.0, 30000.0])
def test_epoch_plans_fit_the_seconds_given(script, rate):
    seconds = 300.0
    epochs = script.plan_v2(rate, seconds, max_epochs=1000)
    assert epochs == 1 or epochs * script.epoch_seconds(rate, script.TRAIN_IMAGES + script.TCCE_TRAIN_IMAGES) <= seconds
    assert script.plan_v2(rate, seconds, max_epochs=3) <= 3
    rates = {config: rate for _, config, _ in script.ABLATIONS}
    per_row = script.plan_ablation(rates, seconds, max_epochs=1000)
    assert per_row == 1 or per_row * len(script.ABLATIONS) * script.epoch_seconds(rate) <= seconds


def test_prepare_refuses_a_folder_it_did_not_write(script, tmp_path):
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "keep.txt").write_text("someone's file")
    archive = tmp_path / "fer2013.tar.gz"
    archive.write_bytes(b"")
    args = argparse.Namespace(what="ablation", carry=carry, fer2013=archive, tcce=None, tcce_annotations=None,
                              annotations=archive)
    with pytest.raises(SystemExit, match="prepare did not write"):
        script.prepare(args)
    assert (carry / "keep.txt").read_text() == "someone's file"
