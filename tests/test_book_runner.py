"""The chapter runner: order, parameters injection, timings, and a clear stop on failure."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
from nbtool import write_notebook  # noqa: E402

from draftalign.book.runner import notebooks, run_notebooks  # noqa: E402
from draftalign.book.profiles import get_profile, runs_dir  # noqa: E402


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


def test_tidy_executed_drops_progress_bars_and_collapses_setup(tmp_path):
    import nbformat

    from draftalign.book.runner import tidy_executed

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PROFILE = "cpu"', metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell('PROFILE = "ci"', metadata={"tags": ["injected-parameters"]})
    install = nbformat.v4.new_code_cell('import sys\nif "google.colab" in sys.modules:\n    pass')
    bars = ("\rtraining:   0%|          | 0/40 [00:00<?, ?it/s]"
            "\rtraining:  50%|#####     | 20/40 [00:10<00:10,  2.00it/s, loss=1.2]\n"
            "UserWarning: something the reader should see\n"
            "\rgenerating: 12it [00:03,  3.50it/s]\n")
    work = nbformat.v4.new_code_cell("train()", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=bars),
        nbformat.v4.new_output("stream", name="stdout", text="tau = 1.93 (tok/s 17.7)\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\rx: 100%|##| 2/2 [00:01<00:00, 1.9it/s]\n")])
    setup = nbformat.v4.new_code_cell("from draftalign.book.notebook import setup\nP = setup(PROFILE)")
    nb.cells = [params, injected, install, work, setup]
    path = tmp_path / "ch.ipynb"
    nbformat.write(nb, str(path))
    tidy_executed(path)
    out = nbformat.read(str(path), as_version=4)
    assert "remove-cell" in out.cells[1].metadata["tags"]
    assert "hide-cell" in out.cells[0].metadata["tags"] and "parameters" in out.cells[0].metadata["tags"]
    assert "hide-cell" in out.cells[2].metadata["tags"]
    assert out.cells[4].metadata["tags"] == ["hide-input"]
    outputs = out.cells[3].outputs
    assert [o.name for o in outputs] == ["stderr", "stdout"]  # the all-bar stream is gone
    assert outputs[0].text == "UserWarning: something the reader should see\n"
    assert outputs[1].text == "tau = 1.93 (tok/s 17.7)\n"


def test_a_whole_cpu_run_keeps_each_chapters_measured_time(tmp_path, monkeypatch):
    from draftalign.book import notebook as N
    from draftalign.book import profiles

    root = _project(tmp_path, {"01_a.ipynb": [("code", 'PROFILE = "cpu"', ["parameters"]), ("code", "x = 1")]})
    run_notebooks("cpu", root=root, only=["01"])  # a partial run measures nothing
    assert not (root / "book" / "measured-times.json").exists()
    run_notebooks("ci", root=root)  # nor does another profile
    assert not (root / "book" / "measured-times.json").exists()
    times = run_notebooks("cpu", root=root)
    record = json.loads((root / "book" / "measured-times.json").read_text())
    assert record["seconds"] == {"01_a.ipynb": times[0]["seconds"]} and record["hardware"] and record["date"]
    monkeypatch.setattr(profiles, "repo_root", lambda: root)
    line = N.chapter_time("01")
    assert f"took {times[0]['seconds'] / 60:.0f} min on {record['hardware']}" in line and "*estimated*" in line
