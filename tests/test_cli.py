"""The CLI's surface (conspo/cli.py) when nothing goes wrong; its refusals are in tests/test_cli_errors.py."""

import subprocess
import sys


def test_help_shows_field_docs():
    proc = subprocess.run([sys.executable, "-m", "conspo", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "ConSPO temperature" in proc.stdout and "--group-mode" in proc.stdout
