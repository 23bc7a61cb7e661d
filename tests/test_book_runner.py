"""The chapter runner: order, parameters injection, timings, and a clear stop on failure."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
from nbtool import write_notebook  # noqa: E402

from draftalign.book import notebooks, run_notebooks  # noqa: E402
from draftalign.profiles import get_profile, runs_dir  # noqa: E402


def _project(tmp_path, cells_by_name):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "src" / "draftalign").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    for name, cells in cells_by_name.items():
        write_notebook(str(tmp_path / "notebooks" / name), cells)
    return tmp_path


def test_runs_in_order_with_profile_and_records_times(tmp_path):
    root = _project(tmp_path, {
        "02_b.ipynb": [("code", 'PROFILE = "cpu"', ["parameters"]), ("code", "print('b', PROFILE)")],
        "01_a.ipynb": [("code", 'PROFILE = "cpu"', ["parameters"]), ("code", "x = PROFILE * 2")],
    })
    assert [nb.name for nb in notebooks(root)] == ["01_a.ipynb", "02_b.ipynb"]
    times = run_notebooks("ci", root=root, out_dir=tmp_path / "out")
    assert [t["notebook"] for t in times] == ["01_a.ipynb", "02_b.ipynb"]
    record = json.loads((tmp_path / "out" / "timings-ci.json").read_text())
    assert record == times and all(t["seconds"] >= 0 and len(t["source_sha256"]) == 64 for t in record)
    out = nbformat.read(tmp_path / "out" / "02_b.ipynb", as_version=4)
    assert "b ci" in "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)


def test_stops_at_first_failing_cell_with_a_clear_message(tmp_path):
    root = _project(tmp_path, {
        "01_bad.ipynb": [("code", 'PROFILE = "cpu"', ["parameters"]), ("code", "1 / 0")],
        "02_never.ipynb": [("code", 'PROFILE = "cpu"', ["parameters"])],
    })
    with pytest.raises(SystemExit) as info:
        run_notebooks("ci", root=root, out_dir=tmp_path / "out")
    message = str(info.value)
    assert "01_bad.ipynb failed" in message and "ZeroDivisionError" in message
    assert not (tmp_path / "out" / "02_never.ipynb").exists()


def test_unknown_profile_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown profile"):
        run_notebooks("tpu", root=tmp_path)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("tpu")


def test_runs_dir_follows_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAFTALIGN_RUNS", str(tmp_path))
    assert runs_dir("ci") == tmp_path / "ci"
    assert runs_dir(get_profile("cpu")) == tmp_path / "cpu"
