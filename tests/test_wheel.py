"""The built wheel holds the library, the plugin and the suites (as the package
editguard_suites) with their case files, so `pytest --pyargs editguard_suites.hardcf` runs in
anyone's project. The slow end-to-end check (fresh venv, one real edit) is bench/wheel_smoke.sh."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the build reads; copied so that the build leaves nothing in the checkout (and a stale
# build/ folder there cannot leak old files into the wheel).
BUILD_INPUTS = ("pyproject.toml", "README.md", "editguard", "pytest_editguard", "suites")


def test_wheel_ships_the_suites_and_their_case_files(tmp_path):
    source = tmp_path / "source"
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("editguard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for required in ("editguard_suites/__init__.py", "editguard_suites/hardcf/__init__.py",
                     "editguard_suites/hardcf/test_hardcf.py", "editguard_suites/hardcf/smollm2-135m.json",
                     "editguard_suites/hardedit/cases.json", "editguard_suites/hardedit/test_hardedit.py"):
        assert required in names
    # Every source file and case file, under its package's name (the packages are listed by hand).
    expected = {path.relative_to(ROOT).as_posix() for package in ("editguard", "pytest_editguard")
                for path in (ROOT / package).rglob("*.py")}
    expected |= {"editguard_suites/" + path.relative_to(ROOT / "suites").as_posix()
                 for pattern in ("*.py", "*.json") for path in (ROOT / "suites").rglob(pattern)}
    assert not {n for n in expected if "__pycache__" not in n} - names
    assert not any(n.startswith(("suites/", "tests/", "bench/")) for n in names)
    assert "editguard = pytest_editguard.plugin" in entry_points
