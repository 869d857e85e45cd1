"""An installed ptxfast (a wheel, not the checkout) carries its recipes and export profiles."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ptxfast import shipped_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "files"), [("train", {"paper", "quick"}), ("export", {"cpu-fp32"})]
)
def test_shipped_dir_holds_the_checkout_files(name: str, files: set[str]) -> None:
    found = {p.stem for p in shipped_dir(name).glob("*.toml")}
    assert files <= found
    assert found == {p.stem for p in (ROOT / name).glob("*.toml")}


def test_wheel_carries_recipes_and_profiles(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / item, src / item)
    for item in ("ptxfast", "train", "export"):
        shutil.copytree(ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0 and "No module named pip" in done.stderr:
        pytest.skip("pip is not installed in this environment")
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("ptxfast-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("train", "export"):
        for toml in (ROOT / name).glob("*.toml"):
            assert f"ptxfast/_{name}/{toml.name}" in names
    # Every module of the checkout's package is in the wheel (a subpackage missing from
    # pyproject's list would import in the checkout and fail once installed).
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ptxfast").rglob("*.py")}
    assert not modules - names, f"not in the wheel: {sorted(modules - names)}"
