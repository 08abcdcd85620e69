"""The ``python -m emo_core`` dispatcher."""
import pytest

from emo_core.__main__ import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_says_so(capsys):
    assert main(["gnerate"]) == 2
    assert "unknown command 'gnerate'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_help_reaches_the_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"python -m emo_core {command}" in capsys.readouterr().out
