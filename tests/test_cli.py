"""The `msfer` command line: every command and every option explains itself."""
import argparse
import importlib

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
