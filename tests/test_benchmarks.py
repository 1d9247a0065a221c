"""The benchmark scripts run (tiny settings): their figures are quoted in docs/PERFORMANCE.md."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("bench_*.py")))
def test_every_benchmark_documents_its_command(script):
    assert "usage:" in run(script, "--help")


def test_step_time_prints_a_ratio_per_method():
    methods = ["dual_ascent", "symmetrised", "relaxed_published_lie"]
    out = run(
        "bench_step_time.py", "--cases", "tetris:tfn", "--rounds", "1", "--steps", "1", "--methods", *methods
    )
    row = next(line for line in out.splitlines() if line.startswith("tetris:tfn"))
    assert len(row.split()) == 2 + len(methods) and all(float(v) > 0 for v in row.split()[1:])


def test_step_time_prints_a_ratio_per_case():
    out = run("bench_step_time.py", "--cases", "tetris:tfn", "--rounds", "1", "--steps", "1")
    row = next(line for line in out.splitlines() if line.startswith("tetris:tfn"))
    plain_ms, relaxed, theta0 = (float(v) for v in row.split()[1:4])
    assert plain_ms > 0 and relaxed > 0 and theta0 > 0
    assert out.startswith("# python ")  # the command that made the figures
