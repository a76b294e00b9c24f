"""The research notebooks run top to bottom under papermill, shrunk through their parameters cell."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest

from osm.research.synthetic import random_walk_bars
from osm.research.walkforward import ParameterSchedule, make_folds

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# A missing data file makes the notebooks use synthetic bars: the test needs no shared data.
SMALL = {"data_file": "/nonexistent/bars.csv", "synthetic_bars": 4000, "fast": [5, 10]}


def _run(name: str, out: Path, **parameters) -> nbformat.NotebookNode:
    return _execute(name, out, {**SMALL, **parameters})


def _execute(name: str, out: Path, parameters: dict) -> nbformat.NotebookNode:
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def _text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _pictures(notebook: nbformat.NotebookNode) -> list[bytes]:
    return [
        base64.b64decode(output["data"]["image/png"])
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


@pytest.mark.parametrize("name", ["02_research_sweep.ipynb", "03_walk_forward.ipynb"])
def test_notebooks_have_a_parameters_cell(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "data_file" in tagged[0].source


def test_sweep_notebook(tmp_path):
    notebook = _run("02_research_sweep.ipynb", tmp_path / "out.ipynb", slow=[40, 80, 120])
    text = _text(notebook)
    assert "4,000 bars from synthetic random walk" in text
    assert "6 combinations; 5 moving averages computed" in text
    assert "no lookahead" in text
    pictures = _pictures(notebook)
    assert len(pictures) == 2 and all(p.startswith(b"\x89PNG") for p in pictures)


def test_walk_forward_notebook(tmp_path):
    schedule_path = tmp_path / "schedule.json"
    notebook = _run(
        "03_walk_forward.ipynb", tmp_path / "out.ipynb", slow=[40, 80], in_sample=1500,
        out_of_sample=500, schedule_path=str(schedule_path),
    )  # fmt: skip
    schedule = ParameterSchedule.load(schedule_path)
    folds = make_folds(random_walk_bars(4000, seed=7)["time"], 1500, 500)
    assert len(schedule.entries) == len(folds) == 5
    assert all(entry.params["fast"] in (5, 10) for entry in schedule.entries)
    assert f"({len(folds)} entries)" in _text(notebook)
    assert len(_pictures(notebook)) == 1


def test_promote_notebook_runs_the_story_to_parity_and_stops_everything(tmp_path, home):
    small = {
        "history_bars": 2000,
        "live_bars": 300,
        "window": 150,
        "fast": [3, 5],
        "slow": [20, 40],
    }
    notebook = _execute("04_promote.ipynb", tmp_path / "out.ipynb", {**small, "home": str(home)})
    text = _text(notebook)
    assert "parity: PASSED" in text
    assert "299 bars decided" in text and "processes left running: none" in text
    assert "job smacross: SmaCross" in text
    assert len(_pictures(notebook)) == 1
