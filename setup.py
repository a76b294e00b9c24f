"""Package discovery for osm's folder layout; everything else is in pyproject.toml.

pyproject.toml maps each top-level folder to a subpackage of ``osm`` (``package-dir``). setuptools
cannot find the packages inside such a folder under their ``osm.`` names from pyproject.toml alone,
so this finds them here: ``live/adapters/oanda/`` (with an ``__init__.py``) ships in the wheel as
``osm.live.adapters.oanda`` without being listed anywhere.
"""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
FOLDERS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

setup(
    packages=[
        f"{name}.{sub}" if sub else name
        for name, folder in FOLDERS.items()
        for sub in ["", *find_packages(str(ROOT / folder))]
    ]
)
