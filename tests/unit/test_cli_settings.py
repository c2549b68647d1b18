"""A TOLLGATE_* variable the settings refuse stops the command with a clear line, not a
traceback, whichever command reads the settings."""

from __future__ import annotations

import pytest

from gateway.cli import main


@pytest.mark.parametrize("command", [["serve"], ["migrate"]], ids=["serve", "migrate"])
def test_a_refused_setting_is_named_with_its_value_and_reason(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLGATE_BUSY_POLL_US", "-5")
    monkeypatch.setenv("TOLLGATE_PORT", "abc")
    assert main(command) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert sorted(lines) == [
        "tollgate: invalid setting TOLLGATE_BUSY_POLL_US='-5': "
        "Input should be greater than or equal to 0",
        "tollgate: invalid setting TOLLGATE_PORT='abc': "
        "Input should be a valid integer, unable to parse string as an integer",
    ]
