"""The wheel users install carries the files the package reads at run time.

Built with the virtual environment's own build backend (``--no-build-isolation``: no index
needed), from a copy of the files the build reads, so the checkout's ``build/`` stays as it was.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from headwater.pipelines.step_names import STEP_NAMES_DIR

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_wheel_carries_the_released_step_names_and_builds_without_warnings(tmp_path):
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "src",
        tmp_path / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(tmp_path / "dist"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    log = built.stdout + built.stderr
    assert "Warning" not in log, log[log.index("Warning") :][:2000]

    (wheel,) = (tmp_path / "dist").glob("headwater-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    released = sorted(path.name for path in STEP_NAMES_DIR.iterdir())
    assert released, STEP_NAMES_DIR
    missing = [name for name in released if f"headwater/pipelines/step-names/{name}" not in inside]
    assert missing == []
    assert "headwater/pipelines/step_names.py" in inside
