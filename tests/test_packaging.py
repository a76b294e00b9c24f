"""The built wheel holds every module of the source folders, and each imports from the wheel alone.

An editable install maps the folders (``live/`` is ``osm.live``) and finds any subpackage in them;
a wheel holds only the packages the build found. These tests build the wheel once, offline with
the installed backend, and compare it with the source tree, so a subpackage the build misses
(a folder without ``__init__.py``, a listing by hand) fails here rather than on a user's machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FOLDERS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]  # import name -> folder
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")

# Run in a fresh interpreter: drop the editable install's finder and put the unpacked wheel first,
# import each module, and report any that fails or comes from elsewhere.
IMPORT_ALL = """
import importlib, json, sys, traceback
root, modules = sys.argv[1], json.loads(sys.argv[2])
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, root)
problems = {}
for name in modules:
    try:
        module = importlib.import_module(name)
    except BaseException:
        problems[name] = traceback.format_exc(limit=-3)
        continue
    if not str(module.__file__).startswith(root):
        problems[name] = f"imported from {module.__file__}, not from the wheel"
print(json.dumps(problems))
"""


def _module_names(folder: Path, package: str) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join((package, *parts)))
    return names


def _source_modules() -> set[str]:
    return set().union(*(_module_names(ROOT / folder, name) for name, folder in FOLDERS.items()))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (the build writes build/ and *.egg-info where it
    runs) and return its path."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, source / name)
    for folder in FOLDERS.values():
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    dist = tmp / "dist"
    command = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--quiet", "--wheel-dir", str(dist), str(source),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the wheel did not build:\n{done.stdout}\n{done.stderr}"
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def unpacked(wheel: Path) -> Path:
    target = wheel.parent / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_the_wheel_holds_every_module_of_the_source_folders(unpacked: Path) -> None:
    source = _source_modules()
    shipped = _module_names(unpacked / "osm", "osm")
    assert {"osm", "osm.live.adapters.paper", "osm.research.lookahead"} <= source
    assert shipped == source, (
        f"missing from the wheel: {sorted(source - shipped)}; "
        f"in the wheel only: {sorted(shipped - source)}"
    )


def test_every_module_imports_from_the_wheel(unpacked: Path, tmp_path: Path) -> None:
    modules = sorted(_source_modules())
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(unpacked), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the project folder, whose folders must not shadow the wheel
    )
    assert done.returncode == 0, done.stderr
    problems = json.loads(done.stdout.strip().splitlines()[-1])
    assert problems == {}, "\n".join(f"{name}: {text}" for name, text in problems.items())


def test_the_wheel_carries_its_data_dependencies_and_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "osm/py.typed" in names
    assert "Requires-Dist: tzdata>=2024.1" in metadata.splitlines()
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = requirement.split("[")[0].split(">")[0].split("<")[0].split("=")[0]
        assert f"Requires-Dist: {name}" in metadata, requirement
    assert "osm = osm.live.cli:main" in entry_points
    # Only osm itself: no folder of the source tree leaks in as a top-level package.
    assert {n.split("/")[0] for n in names} == {"osm", info}
