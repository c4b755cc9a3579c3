"The `invnb` command."
import subprocess
import sys

import pytest

from invnb.cli import main


def test_demo_runs_and_reloads(tmp_path, capsys):
    assert main(["demo", "--steps", "60", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "held-out NLL" in out and "identical NLLs: True" in out
    assert (tmp_path / "t.safetensors").is_file()


def test_bad_arguments_exit_with_a_message():
    r = subprocess.run([sys.executable, "-c", "from invnb.cli import main; main(['demo', '--steps', '0'])"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--steps must be at least 1" in r.stderr
    r = subprocess.run([sys.executable, "-c", "from invnb.cli import main; main(['nosuch'])"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr
