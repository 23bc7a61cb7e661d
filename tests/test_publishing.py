"""What a reader meets before running anything: the repository's address set in one place,
the Colab install cell (clear failures, a failed install retried), launch buttons that open
the chapter's source, the citation file, the workflows, the README's GPU estimates, and the
rendered pages' badge and paths."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import nbtool  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def install_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and 'if "google.colab" in sys.modules' in c.source]
    assert len(cells) == 1, path.name
    return cells[0]


def test_the_repository_address_is_one_setting():
    url = nbtool.repository_url()
    slug = url.removeprefix("https://github.com/")
    for path in NOTEBOOKS + [ROOT / "README.md"]:
        found = set(nbtool.repository_places(path.read_text(encoding="utf-8")))
        assert found == {slug}, (path.name, found)
    assert nbtool.sync_repository() == []  # nothing left to write: every place already says it
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["repository-code"] == url


def test_launch_buttons_open_the_chapter_sources():
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"] and config["launch_buttons"]["binderhub_url"]
    assert config["repository"]["path_to_book"] == ""  # a page's path is then its path in the repository
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [c["file"] for c in toc["chapters"]]
    assert [f for f in files if f.startswith("notebooks/")] == [f"notebooks/{p.stem}" for p in NOTEBOOKS]
    for page in (f for f in files if not f.startswith("notebooks/")):  # the book's own pages
        assert (ROOT / "book" / f"{page}.md").exists(), page


class _Done:
    def __init__(self, code=0, err=""):
        self.returncode, self.stderr = code, err


def _run_install_cell(path, tmp_path, monkeypatch, calls, *, clone_ok=True, pip_ok=True, gpu=True):
    """Execute a chapter's install cell as Colab would, with git, pip, Drive and CUDA stood in for."""
    import subprocess

    import torch

    root = tmp_path / "content" / "draftalign"
    (root / "notebooks").mkdir(parents=True, exist_ok=True)

    def run(cmd, **_):
        calls.append(cmd[0] if cmd[0] == "git" else "pip")
        if cmd[0] == "git":
            if clone_ok:
                (root / ".git").mkdir(exist_ok=True)
            return _Done(0 if clone_ok else 128, "" if clone_ok else "fatal: repository not found")
        return _Done(0 if pip_ok else 1, "" if pip_ok else "ERROR: No matching distribution found for torch")

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=lambda where: calls.append("mount"))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DRAFTALIGN_RUNS", raising=False)
    code = install_cell(path).replace("/content/draftalign", str(root))
    scope = {"PROFILE": "cpu"}
    exec(compile(code, path.name, "exec"), scope)
    return scope


@pytest.mark.parametrize("path", NOTEBOOKS[:1] + NOTEBOOKS[-1:], ids=lambda p: p.stem)
def test_the_colab_install_cell_retries_a_failed_install_and_says_why(path, tmp_path, monkeypatch, capsys):
    calls = []
    with pytest.raises(SystemExit, match="No matching distribution"):
        _run_install_cell(path, tmp_path, monkeypatch, calls, pip_ok=False)
    scope = _run_install_cell(path, tmp_path, monkeypatch, calls)  # the next run installs again
    assert calls == ["git", "pip", "pip", "mount"], calls
    assert scope["PROFILE"] == "colab" and (tmp_path / "content" / "draftalign" / ".installed").exists()
    calls.clear()
    _run_install_cell(path, tmp_path, monkeypatch, calls, gpu=False)  # installed: neither clone nor pip again
    assert calls == ["mount"] and "Runtime > Change runtime type > T4 GPU" in capsys.readouterr().out


def test_the_colab_install_cell_names_a_failed_clone(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"(?s)could not clone .*DRAFTALIGN_REPO"):
        _run_install_cell(NOTEBOOKS[0], tmp_path, monkeypatch, [], clone_ok=False)


def test_the_citation_cites_the_book_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["preferred-citation"]["type"] == "book"
    paper = cff["references"][0]
    assert "2403.00858" in paper["url"] and paper["authors"][0]["family-names"] == "Goel"


def test_the_workflows_run_the_readme_command_and_publish_the_book():
    readme = (ROOT / "README.md").read_text()
    assert "make test   #" in readme
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert any(step.get("run") == "make test" for step in ci["jobs"]["test"]["steps"])
    book = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = book["jobs"]["build"]["steps"]
    assert any(step.get("run") == "make book PROFILE=ci" for step in steps)
    assert any("deploy-pages" in step.get("uses", "") for step in book["jobs"]["deploy"]["steps"])


def test_the_readme_gpu_table_is_the_estimate():
    from draftalign.book.estimates import estimate_table
    from draftalign.book.profiles import get_profile

    assert estimate_table([get_profile("colab"), get_profile("gpu")]) in (ROOT / "README.md").read_text()


def test_rendered_copies_show_the_badge_from_the_book_and_no_local_paths(tmp_path):
    from draftalign.book.runner import COLAB_BADGE, tidy_executed

    assert (ROOT / "book" / "_assets" / "colab-badge.svg").read_text().startswith("<svg")
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    assert COLAB_BADGE in nb.cells[0].source
    nb.metadata["papermill"] = {"input_path": str(ROOT / "notebooks" / NOTEBOOKS[0].name),
                                "output_path": str(ROOT / "book" / "notebooks" / NOTEBOOKS[0].name)}
    path = tmp_path / NOTEBOOKS[0].name
    nbformat.write(nb, path)
    tidy_executed(path)
    out = nbformat.read(path, as_version=4)
    assert COLAB_BADGE not in out.cells[0].source and "../_assets/colab-badge.svg" in out.cells[0].source
    assert out.metadata["papermill"]["input_path"] == NOTEBOOKS[0].name


def test_solutions_are_folded_where_colab_folds_them():
    """Exercise solutions are HTML ``<details>`` (Colab and the rendered book both fold them),
    not MyST dropdowns (raw text in Colab)."""
    for path in NOTEBOOKS:
        text = "".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        assert ":class: dropdown" not in text, path.name
        # every chapter folds three or more worked solutions, the appendix one or more
        assert text.count("<summary>Solution</summary>") >= (1 if "appendix" in path.name else 3), path.name
