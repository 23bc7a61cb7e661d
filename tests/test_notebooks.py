"""Notebook hygiene, and every chapter executed with the ``ci`` profile through papermill.

The execution test runs the notebooks itself, unless ``DRAFTALIGN_EXECUTED`` names a
folder where ``python -m draftalign.book --profile ci`` just executed the same notebook
sources (``.ci/run`` does that before building the book, so CI runs each notebook once).

Chapters 2-5 also run with the ``colab`` profile's own path (the shipped pretraining stage,
the shipped packed reference answers, the target online, full-vocabulary drafts) at the
``ci`` profile's sizes, through ``$DRAFTALIGN_PROFILE_OVERRIDES``: every cell a Colab reader
runs has run, on the CPU. (Chapter 1 has no colab-only path: at ci sizes it is the ci run.)
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from pathlib import Path

import nbformat
import pytest
import yaml

from draftalign.book.runner import notebooks, run_notebooks, source_digest
from draftalign.book.profiles import OVERRIDES_ENV, Profile, profile_for_run, PROFILES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = notebooks(ROOT)
IDS = [nb.stem for nb in NOTEBOOKS]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_outputs_stripped(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; strip them (tools/nbtool.py --strip)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0].cell_type == "code"
    tree = ast.parse(tagged[0].source)
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert set(assigned) == {"PROFILE"}, f"{path.name}: the parameters cell must set only PROFILE"
    assert isinstance(assigned["PROFILE"], ast.Constant) and assigned["PROFILE"].value in PROFILES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_badge_and_install_cell(path):
    nb = nbformat.read(path, as_version=4)
    first_md = next(c for c in nb.cells if c.cell_type == "markdown")
    assert "colab-badge.svg" in first_md.source, f"{path.name}: no Colab badge in the first markdown cell"
    assert f"notebooks/{path.name}" in first_md.source, f"{path.name}: the badge points elsewhere"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    install = [s for s in code if "pip" in s and "install" in s]
    assert install and all('"google.colab" in sys.modules' in s for s in install), \
        f"{path.name}: the install cell must run only on Colab"


def _setup_call(source: str) -> ast.Call | None:
    """The ``P = setup(PROFILE, ...)`` call at the top level of a cell, if there is one."""
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["P"]
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "setup"):
            return node.value
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_setup_cell(path):
    """Every chapter starts with ``P = setup(PROFILE, ...)`` from :mod:`draftalign.book.notebook`
    (seed, progress bars, pandas precision, the versions table), in the cell that imports
    it, before any other cell reads ``P``; nothing redefines ``setup``, and the setup cell
    does not repeat by hand what it does."""
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    calls = [(i, _setup_call(s)) for i, s in enumerate(code) if _setup_call(s) is not None]
    assert len(calls) == 1, f"{path.name}: expected one cell with P = setup(PROFILE), found {len(calls)}"
    i, call = calls[0]
    assert call.args and isinstance(call.args[0], ast.Name) and call.args[0].id == "PROFILE", \
        f"{path.name}: setup must be called with the PROFILE parameter"
    imports = [n for n in ast.parse(code[i]).body if isinstance(n, ast.ImportFrom) and n.module == "draftalign.book.notebook"]
    assert any(a.name == "setup" for n in imports for a in n.names), \
        f"{path.name}: the setup cell must import setup from draftalign.book.notebook"
    early = [j for j, s in enumerate(code[:i]) if "P." in s or "P =" in s]
    assert not early, f"{path.name}: code cells {early} use P before setup(PROFILE)"
    for j, s in enumerate(code):
        tree = ast.parse(s)
        assert not any(isinstance(n, (ast.FunctionDef, ast.Assign)) and (
            getattr(n, "name", None) == "setup" or any(isinstance(t, ast.Name) and t.id == "setup"
                                                       for t in getattr(n, "targets", [])))
            for n in ast.walk(tree)), f"{path.name}: code cell {j} redefines setup"
    repeated = [w for w in ("versions()", "manual_seed", "disable_progress_bar", "TqdmWarning", "display.precision")
                if w in code[i]]
    assert not repeated, f"{path.name}: the setup cell repeats what setup(PROFILE) does: {repeated}"


def _toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for value in node.values():
            out += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            out += _toc_files(item)
    return out


def test_every_notebook_in_toc():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = set(_toc_files(toc)) | {toc["root"]}
    missing = [nb.name for nb in NOTEBOOKS if f"notebooks/{nb.stem}" not in files]
    assert not missing, f"notebooks missing from book/_toc.yml: {missing}"
    for entry in files - {f"notebooks/{nb.stem}" for nb in NOTEBOOKS}:
        assert list((ROOT / "book").glob(entry + ".*")), f"_toc.yml names {entry}, which does not exist"


def _executed_copy(path: Path) -> Path | None:
    """The executed ci copy from this CI run, if it matches the notebook's source."""
    folder = os.environ.get("DRAFTALIGN_EXECUTED")
    if not folder:
        return None
    record = Path(folder) / "timings-ci.json"
    if not record.exists():
        return None
    entries = {e["notebook"]: e for e in json.loads(record.read_text())}
    entry = entries.get(path.name)
    if entry is None or entry.get("source_sha256") != source_digest(path):
        return None
    return Path(folder) / path.name


def ran_clean(executed: Path, name: str):
    """The executed notebook, after checking that every code cell ran and none raised."""
    nb = nbformat.read(executed, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}: not every cell ran"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_with_ci_profile(path, tmp_path):
    executed = _executed_copy(path)
    if executed is None:
        run_notebooks("ci", root=ROOT, only=[path.name], out_dir=tmp_path)
        executed = tmp_path / path.name
    nb = ran_clean(executed, path.name)
    params = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert params and 'PROFILE = "ci"' in params[0].source


def test_source_digest_follows_the_content_only(tmp_path):
    """An executed copy is reused only for the same source: the digest changes with one
    byte of content and with nothing else (not the file's name or modification time)."""
    import os

    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    a.write_text('{"cells": []}')
    b.write_text('{"cells": []}')
    first = source_digest(a)
    os.utime(a, (0, 0))
    assert source_digest(a) == first == source_digest(b)
    a.write_text('{"cells": [1]}')
    assert source_digest(a) != first


# what makes the colab path the colab path: kept from the colab profile; every other field
# that differs from the ci profile (a size, a budget, a prompt count) takes the ci value
COLAB_PATH_FIELDS = {"name", "pretrained_from", "draft_hidden", "draft_layers", "draft_heads",
                     "draft_intermediate", "distill_topk", "kd_data", "kd_target", "kd_sub_vocab",
                     "kd_losses", "kd_lr"}


COLAB_KD_ROWS = 240  # of the 10,240 shipped answers (all of them: 6 minutes of Chapter 4 on 2 cores)


def colab_at_ci_sizes() -> dict:
    ci, colab = PROFILES["ci"], PROFILES["colab"]
    sizes = {f.name: getattr(ci, f.name) for f in dataclasses.fields(Profile)
             if f.name not in COLAB_PATH_FIELDS and getattr(ci, f.name) != getattr(colab, f.name)}
    return sizes | {"kd_rows": COLAB_KD_ROWS}


def test_colab_at_ci_sizes_keeps_the_colab_path(monkeypatch):
    """Through the environment variable, as the notebooks get it: the ci profile's sizes,
    the colab profile's path."""
    monkeypatch.setenv(OVERRIDES_ENV, json.dumps(colab_at_ci_sizes()))
    P, ci, colab = profile_for_run("colab"), PROFILES["ci"], PROFILES["colab"]
    assert (P.kd_steps, P.ch5_gammas, P.eval_max_new_tokens) == (ci.kd_steps, ci.ch5_gammas, ci.eval_max_new_tokens)
    assert all(getattr(P, f) == getattr(colab, f) for f in COLAB_PATH_FIELDS - {"name"})
    assert P.kd_rows == COLAB_KD_ROWS and P.name == "colab-custom"


COLAB_CHAPTERS = [nb for nb in NOTEBOOKS if not nb.name.startswith("01")]


@pytest.fixture(scope="module")
def colab_run(tmp_path_factory):
    """Chapters 2-5 in order with ``PROFILE = "colab"`` at ci sizes, in one runs folder (each
    chapter reuses the last one's artifacts, as on Colab); ``{notebook: (executed copy, error)}``."""
    runs, out = tmp_path_factory.mktemp("colab-runs"), tmp_path_factory.mktemp("colab-executed")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRAFTALIGN_RUNS", str(runs))
        mp.setenv(OVERRIDES_ENV, json.dumps(colab_at_ci_sizes()))
        for nb in COLAB_CHAPTERS:
            try:
                run_notebooks("colab", root=ROOT, only=[nb.name], out_dir=out)
                results[nb.name] = (out / nb.name, None)
            except SystemExit as exc:
                results[nb.name] = (out / nb.name, str(exc))
    return runs, results


@pytest.mark.slow
@pytest.mark.parametrize("path", COLAB_CHAPTERS, ids=[nb.stem for nb in COLAB_CHAPTERS])
def test_notebook_runs_the_colab_path_at_ci_sizes(path, colab_run):
    runs, results = colab_run
    executed, error = results[path.name]
    assert error is None, error
    ran_clean(executed, path.name)
    assert (runs / "colab-custom").is_dir() and not (runs / "colab").exists()
    if path.name.startswith("02"):  # the shipped pretraining stage, copied: nothing pretrained here
        spec = json.loads((runs / "colab-custom" / "draft-pretrained" / "manifest.json").read_text())["spec"]
        assert spec["from"] == PROFILES["colab"].pretrained_from
    if path.name.startswith("04"):  # each loss distilled on the shipped answers, full vocabulary
        for loss in PROFILES["colab"].kd_losses:
            spec = json.loads((runs / "colab-custom" / f"draft-{loss}" / "manifest.json").read_text())["spec"]
            assert spec["data"] == PROFILES["colab"].kd_data and spec["data_rows"] == COLAB_KD_ROWS
            config = json.loads((runs / "colab-custom" / f"draft-{loss}" / "config.json").read_text())
            assert config["vocab_size"] == 49152
