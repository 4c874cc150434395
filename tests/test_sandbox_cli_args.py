"""``simpletir sandbox exec --timeout`` refuses values no sandbox can honour, in one usage line."""

from __future__ import annotations

import pytest

from simpletir.plugins.tools.python_sandbox.cli import main


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bad_timeouts_are_usage_errors(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["exec", "-", f"--timeout={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --timeout" in err and value in err and "Traceback" not in err
