"""The `msfer` command line: every command and every option explains itself."""
import argparse
import importlib
import os

import pytest

from msfer.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_every_command_has_help(command, capsys):
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"msfer {command}")
    module.add_arguments(parser)
    parsers = [parser] + [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                          for sub in action.choices.values()]
    for each in parsers:
        for action in each._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help, f"msfer {command}: option {action.dest!r} has no help text"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: msfer" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["datasets", "inspect", str(tmp_path / "absent"), "--format", "folder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msfer datasets: error:") and "Traceback" not in err


def _options(command: str) -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return {option: action for action in parser._actions for option in action.option_strings}


# Every command that loads an emotion model, and the model options it honours.
MODEL_COMMANDS = {"predict": ("--weights", "--device", "--backend"), "evaluate": ("--weights", "--device", "--backend"),
                  "serve": ("--weights", "--device", "--backend"), "report": ("--weights", "--device", "--backend"),
                  "export": ("--weights",)}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_model_options_are_one_set_with_one_set_of_defaults(command):
    reference = _options("predict")
    options = _options(command)
    for name in ("--weights", "--device", "--backend"):
        if name not in MODEL_COMMANDS[command]:
            assert name not in options, f"msfer {command} {name} would change nothing"
            continue
        mine, theirs = options[name], reference[name]
        assert (mine.default, mine.choices, mine.type) == (theirs.default, theirs.choices, theirs.type), \
            f"{command} {name}"
    assert reference["--device"].default == "auto" and reference["--weights"].default is None


def test_model_options_are_checked_before_any_model_loads(tmp_path, capsys):
    from msfer.cli.options import model_options

    assert model_options(argparse.Namespace(weights=None, device="auto", backend="onnx"))["device"] == "cpu"
    assert main(["predict", "--backend", "onnx", "--device", "cuda:1", str(tmp_path)]) == 2
    assert "--backend onnx runs on the CPU" in capsys.readouterr().err
    assert main(["evaluate", "--backend", "onnx", "--data", str(tmp_path), "--format", "folder",
                 "--out", str(tmp_path)]) == 2
    assert "--backend onnx is for the whole pipeline (--detect-faces)" in capsys.readouterr().err


@pytest.mark.parametrize("command, module, extra", [("serve", "fastapi", "serve"), ("export", "onnx", "export"),
                                                    ("train", "tensorboard", "train")])
def test_a_command_whose_extra_is_missing_says_what_to_install(command, module, extra, monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed: importing it fails
    extras = ("msfer.inference.service", "msfer.inference.export", "msfer.cli.serve", "msfer.cli.export")
    for loaded in [name for name in sys.modules if name.startswith(extras)]:
        monkeypatch.delitem(sys.modules, loaded)
    args = {"serve": [], "export": ["--out", str(tmp_path / "m.onnx")], "train": ["--config", os.devnull]}
    assert main([command, *args[command]]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'msfer[{extra}]'" in err and "Traceback" not in err


@pytest.mark.parametrize("command, option, value", [
    ("predict", "--every", "0"), ("predict", "--every", "-2"), ("predict", "--batch-size", "0"),
    ("predict", "--batch-size", "-1"), ("report", "--every", "0"), ("report", "--every", "-2"),
    ("evaluate", "--batch-size", "0"), ("evaluate", "--batch-size", "-1"),
])
def test_counts_below_one_are_refused(command, option, value, tmp_path, capsys):
    (tmp_path / "photo.jpg").write_bytes(b"")
    arguments = {"predict": [str(tmp_path)], "report": [str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "report")],
                 "evaluate": ["--data", str(tmp_path), "--format", "folder", "--out", str(tmp_path / "eval")]}[command]
    assert main([command, *arguments, option, value]) == 2
    assert capsys.readouterr().err == f"msfer {command}: error: {option} must be at least 1, got {value}\n"
    assert sorted(os.listdir(tmp_path)) == ["photo.jpg"]


@pytest.mark.parametrize("command", ["predict", "annotate"])
def test_resume_and_overwrite_together_are_a_usage_error(command, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text('{"kept": true}\n')
    arguments = {"predict": [str(tmp_path), "--out", str(out)],
                 "annotate": [str(tmp_path), "--format", "folder", "--out", str(out)]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *arguments, "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    assert "--overwrite: not allowed with argument --resume" in capsys.readouterr().err
    assert out.read_text() == '{"kept": true}\n'  # nothing was touched
