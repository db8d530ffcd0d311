"""Usage errors of the command line: one line naming the help of the command concerned."""

from __future__ import annotations

import pytest

from engine.cli.main import main


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["frobnicate"], "(see ilsim --help)"),
        (["run"], "(see ilsim run --help)"),
        (["plot", "out.h5", "--bogus"], "(see ilsim plot --help)"),
    ],
)
def test_a_usage_error_is_one_line_pointing_to_the_right_help(capsys, argv, hint):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ilsim: error: ") and err.rstrip().endswith(hint)
