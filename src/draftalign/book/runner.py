"""The chapter runner: execute the book's notebooks with papermill for one profile.

    draftalign book --profile cpu [--only 01] [--build]     (or python -m draftalign.book ...)

Reads ``notebooks/*.ipynb`` (in name order) from the project folder; writes executed
copies to ``book/notebooks/`` (git-ignored; the Jupyter Book renders these, it never
executes anything itself) and a timing record ``book/notebooks/timings-<profile>.json``.
Stops at the first failing cell with the notebook, the cell and the error. Each executed
copy is tidied for reading (:func:`tidy_executed`: progress bars dropped, the parameters
and install cells collapsed). ``--build`` then renders the HTML with Jupyter Book
(warnings are errors).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .profiles import PROFILES, repo_root
from .student import strip_markers

__all__ = ["notebooks", "run_notebooks", "record_measured_times", "build_html", "source_digest", "tidy_executed"]


COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def source_digest(path: Path) -> str:
    """sha256 of a notebook file: which source an executed copy came from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# a tqdm bar as it lands in a notebook's stderr: "desc:  45%|####5     | 108/240 [01:21<01:43, ...]"
_BAR = re.compile(r"\d+%\||\[\d+:\d\d(<|,|\])|\?it/s|\d(it/s|s/it)\b")


def _without_bars(text: str) -> str:
    """``text`` with every tqdm progress line (each ``\\r`` redraw included) removed."""
    kept = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p.strip() and not _BAR.search(p)]
        if parts:
            kept.append(parts[-1])  # what a terminal would show after the last redraw
    return "\n".join(kept) + ("\n" if kept and text.endswith("\n") else "")


def _add_tag(cell, tag: str) -> None:
    tags = list(cell.metadata.get("tags", []))
    if tag not in tags:
        cell.metadata["tags"] = tags + [tag]


def tidy_executed(path: Path) -> Path:
    """Make an executed chapter read well in the rendered book, in place: progress bars
    are dropped from the outputs (they served the run, not the reader), papermill's
    injected parameters cell is removed, the parameters and Colab install cells are
    collapsed (one click shows them), the imports of the setup cell hidden behind a toggle and
    the exercises' solution markers removed. Nothing a cell printed besides the bars is lost."""
    import nbformat

    nb = strip_markers(nbformat.read(str(path), as_version=4))  # solutions read as plain code
    for cell in nb.cells:
        if cell.cell_type == "markdown":  # the badge's image from the book itself: it renders offline
            cell.source = cell.source.replace(COLAB_BADGE, "../_assets/colab-badge.svg")
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags:
            _add_tag(cell, "remove-cell")
        elif "parameters" in tags or "google.colab" in cell.source:
            _add_tag(cell, "hide-cell")
        elif "draftalign.book.notebook import setup" in cell.source and "hide-cell" not in tags:
            _add_tag(cell, "hide-input")  # the imports: its output (versions, profile) stays
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                out["text"] = _without_bars(out.get("text", ""))
                if not out["text"].strip():
                    continue
            outputs.append(out)
        cell["outputs"] = outputs
    paths = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):  # where this machine keeps the project: nobody's business
        if paths.get(key):
            paths[key] = Path(paths[key]).name
    nbformat.write(nb, str(path))
    return path


def notebooks(root: Path | None = None, only: list[str] | None = None) -> list[Path]:
    """The chapter notebooks in order, optionally only those whose name starts with one
    of ``only``."""
    root = root or repo_root()
    found = sorted((root / "notebooks").glob("*.ipynb"))
    if only:
        found = [nb for nb in found if any(nb.name.startswith(o) for o in only)]
    return found


def run_notebooks(profile: str, *, root: Path | None = None, only: list[str] | None = None,
                  out_dir: Path | None = None, progress: bool = False) -> list[dict]:
    """Execute each notebook with ``PROFILE = profile``; returns per-notebook times.

    Raises ``SystemExit`` with a clear message on the first failure; the executed copy
    with the traceback is kept for inspection.
    """
    import papermill as pm

    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    root = root or repo_root()
    out_dir = out_dir or root / "book" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = notebooks(root, only)
    if not todo:
        raise SystemExit(f"no notebooks matched in {root / 'notebooks'}")
    # the kernel must be this interpreter (the venv's), whatever PATH says
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    times = []
    for nb in todo:
        out = out_dir / nb.name
        print(f"[book] {nb.name} (profile {profile}) ...", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters={"PROFILE": profile},
                                cwd=str(nb.parent), kernel_name="python3", progress_bar=progress,
                                log_output=False)
        except pm.PapermillExecutionError as exc:
            raise SystemExit(
                f"[book] {nb.name} failed in cell {exc.exec_count} (profile {profile}):\n"
                f"  {exc.ename}: {exc.evalue}\n  executed copy with the traceback: {out}") from None
        seconds = time.perf_counter() - start
        tidy_executed(out)
        times.append({"notebook": nb.name, "profile": profile, "seconds": round(seconds, 1),
                      "source_sha256": source_digest(nb)})
        print(f"[book] {nb.name} done in {seconds:.1f} s", flush=True)
    (out_dir / f"timings-{profile}.json").write_text(json.dumps(times, indent=2))
    if profile == "cpu" and not only and out_dir == root / "book" / "notebooks":
        record_measured_times(root, times)
    total = sum(t["seconds"] for t in times)
    print(f"[book] all {len(times)} notebooks ran in {total:.1f} s (profile {profile})")
    return times


def record_measured_times(root: Path, times: list[dict]) -> Path:
    """Keep a whole ``cpu`` run's per-chapter seconds in ``book/measured-times.json``
    (tracked: each chapter page states its measured CPU time from it, see
    :func:`draftalign.book.notebook.chapter_time`), with the hardware and the date."""
    from ..artifacts import write_json
    from ..provenance import versions

    return write_json(Path(root) / "book" / "measured-times.json",
                      {"hardware": versions()["hardware"], "date": time.strftime("%Y-%m-%d"),
                       "seconds": {t["notebook"]: t["seconds"] for t in times}})


def build_html(root: Path | None = None) -> Path:
    """Render the book with Jupyter Book (warnings are errors); returns index.html."""
    root = root or repo_root()
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root / "book"),
           "--builder", "html", "--warningiserror", "--keep-going"]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"[book] `{' '.join(cmd)}` failed with exit code {proc.returncode}")
    return root / "book" / "_build" / "html" / "index.html"
