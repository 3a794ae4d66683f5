"""`streamd demo` is the README's first command: it must end with sent == read back."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


def test_demo_runs_and_everything_sent_is_read_back() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamd", "demo", "--duration", "12", "--rate", "300"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "RESULT              OK: sent == read back" in out
    # the injected faults show up as classified reconnects
    final = next(line for line in out.splitlines() if line.startswith("reconnects by reason"))
    for reason in ("operational_disconnect", "server_error", "stall"):
        assert reason in final
    sent = int(next(x for x in out.splitlines() if x.startswith("simulator sent")).split()[2])
    assert sent > 500
