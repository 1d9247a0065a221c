"""The environment files agree, and the package exposes its command."""

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def pins(text: str) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2)
        for m in re.finditer(r"^\s*(?:- )?([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)
    }


def test_environment_yml_pins_the_lock_file_versions():
    lock = pins((REPO / "requirements.lock").read_text())
    env = pins((REPO / "environment.yml").read_text())
    assert lock == env
    for pkg in ("torch", "torchvision", "numpy", "pandas", "escnn", "e3nn", "snakemake", "seaborn"):
        assert pkg in lock
    assert lock["numpy"].startswith("1.") and lock["pandas"].startswith("2.")


def test_console_script_is_installed_next_to_the_interpreter():
    script = Path(sys.executable).parent / "relaxbench"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "train" in out
