"""The examples and the README's first command: `cpbuild` at the repository root builds them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what the README's first command builds: the root configuration and examples."""
    shutil.copy(REPO / "cpbuild.toml", tmp_path / "cpbuild.toml")
    shutil.copytree(
        REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("build", ".cpbuild")
    )
    return tmp_path


def cpbuild(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpbuild", *args], cwd=folder, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the C example needs gcc")
def test_root_build_builds_both_examples_then_nothing(checkout):
    first = cpbuild(checkout)
    assert first.returncode == 0, first.stdout + first.stderr
    output = (checkout / "examples/c_program/build/output.txt").read_text()
    assert "Hello" in output
    report = (checkout / "examples/data_pipeline/build/report.md").read_text()
    assert "Berlin" in report
    second = cpbuild(checkout)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date" in second.stdout and "ran " not in second.stdout


def test_each_example_builds_on_its_own(checkout):
    result = cpbuild(checkout, "-C", "examples/data_pipeline")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (checkout / "examples/data_pipeline/build/report.md").is_file()
    again = cpbuild(checkout, "-C", "examples/data_pipeline")
    assert "up to date" in again.stdout and "ran " not in again.stdout, again.stdout
