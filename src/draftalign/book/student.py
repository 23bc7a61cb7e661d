"""The student edition: each chapter with its exercises open and its solutions taken out.

    draftalign book --student        (or make student)

Reads the full chapters ``notebooks/NN_*.ipynb``; writes ``notebooks/student/NN_*.ipynb``
(same names, outputs cleared, the source's name and sha256 in the metadata under
``draftalign``). It runs nothing. The markup it reads, in the full edition:

- a code cell tagged ``exercise`` holds one or more blocks between the lines
  ``# BEGIN SOLUTION`` and ``# END SOLUTION``; each block becomes ``# TODO: <hint>`` and
  ``raise NotImplementedError("exercise: <hint>")`` at the marker's indentation, the hint
  taken from a ``# HINT: ...`` line right after ``# BEGIN SOLUTION``;
- a code cell tagged ``check`` (asserts on the answer) is kept as it is;
- a cell tagged ``solution`` is left out;
- in markdown, a ``<details>`` block whose ``<summary>`` starts with "Solution" becomes
  one line that points to the full edition.

The rendered book shows the full edition without the marker lines (:func:`strip_markers`,
called by the chapter runner).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from .profiles import repo_root

__all__ = ["student_notebook", "write_student_edition", "check_student_edition", "strip_markers",
           "solution_blocks", "StaleStudentEdition", "CHAPTERS", "SOLUTION_NOTE"]

CHAPTERS = "[0-9][0-9]_*.ipynb"  # the chapter notebooks, in name order
BEGIN, END, HINT = "# BEGIN SOLUTION", "# END SOLUTION", "# HINT:"
DEFAULT_HINT = "write your solution here"
SOLUTION_NOTE = "*The solution is in the full edition of this chapter.*"
ROLES = ("exercise", "check", "solution")

# a line that looks like a marker but is not written as one: it would leak a solution
_LOOSE_MARKER = re.compile(r"#+\s*(begin|end)\s*solution", re.IGNORECASE)
_DETAILS = re.compile(r"(?m)^[ \t]*<details\b[^>]*>|</details\s*>", re.IGNORECASE)
_SUMMARY = re.compile(r"<summary\b[^>]*>(.*?)</summary\s*>", re.IGNORECASE | re.DOTALL)


class StaleStudentEdition(RuntimeError):
    """``notebooks/student/`` is not what :func:`write_student_edition` would write now."""


def _is_marker(line: str, marker: str) -> bool:
    return line.strip() == marker


def _has_marker(source: str) -> bool:
    return any(_is_marker(x, BEGIN) or _is_marker(x, END) or _LOOSE_MARKER.match(x.strip())
               for x in source.split("\n"))


def _blocks(source: str, where: str) -> list[tuple[int, int, str]]:
    """The solution blocks of a cell's source as ``(first line, last line, hint)``, the
    marker lines included (0-based); ValueError for a marker that is unbalanced, nested or
    malformed. ``where`` names the notebook and cell in the message."""
    lines, found, start = source.split("\n"), [], None
    for i, line in enumerate(lines):
        if _is_marker(line, BEGIN):
            if start is not None:
                raise ValueError(f"{where}, line {i + 1}: {BEGIN!r} inside the block opened on line "
                                 f"{start + 1} (blocks cannot nest; close it with {END!r})")
            start = i
        elif _is_marker(line, END):
            if start is None:
                raise ValueError(f"{where}, line {i + 1}: {END!r} without a {BEGIN!r} before it")
            after = lines[start + 1].strip() if start + 1 < i else ""
            hint = after[len(HINT):].strip() if after.startswith(HINT) else ""
            found.append((start, i, hint or DEFAULT_HINT))
            start = None
        elif _LOOSE_MARKER.match(line.strip()):
            raise ValueError(f"{where}, line {i + 1}: {line.strip()!r} is not a marker; write "
                             f"{BEGIN!r} or {END!r} alone on its line")
    if start is not None:
        raise ValueError(f"{where}, line {start + 1}: {BEGIN!r} without {END!r}")
    return found


def solution_blocks(source: str, where: str = "cell") -> list[str]:
    """The code of each solution block in ``source``, without its markers and hint line."""
    lines, out = source.split("\n"), []
    for first, last, _ in _blocks(source, where):
        body = lines[first + 1:last]
        if body and body[0].strip().startswith(HINT):
            body = body[1:]
        out.append("\n".join(body))
    return out


def _open_exercise(source: str, where: str) -> str:
    """An exercise cell's source with each solution block replaced by a TODO and a raise."""
    lines = source.split("\n")
    blocks = _blocks(source, where)
    if not blocks:
        raise ValueError(f"{where}: tagged 'exercise' but holds no {BEGIN!r} ... {END!r} block")
    for first, last, hint in reversed(blocks):  # from the end: earlier line numbers stay valid
        indent = lines[first][:len(lines[first]) - len(lines[first].lstrip())]
        message = json.dumps(f"exercise: {hint}", ensure_ascii=False)  # a valid Python string literal
        lines[first:last + 1] = [f"{indent}# TODO: {hint}", f"{indent}raise NotImplementedError({message})"]
    return "\n".join(lines)


def _fold_solutions(source: str, where: str) -> str:
    """Markdown with every ``<details>`` block summarised "Solution ..." replaced by
    :data:`SOLUTION_NOTE`; other ``<details>`` blocks (and those nested in them) stay."""
    stack, spans = [], []
    for m in _DETAILS.finditer(source):
        if not m.group().startswith("</"):
            stack.append(m)
            continue
        if not stack:
            raise ValueError(f"{where}: '</details>' without an opening '<details>'")
        opening = stack.pop()
        summary = _SUMMARY.search(source, opening.end(), m.start())
        text = re.sub(r"<[^>]+>", "", summary.group(1)).strip() if summary else ""
        if re.match(r"solutions?\b", text, re.IGNORECASE):
            spans.append((opening.start(), m.end()))
    if stack:
        raise ValueError(f"{where}: '<details>' without '</details>'")
    outer = [s for s in spans if not any(o[0] < s[0] and s[1] <= o[1] for o in spans)]
    for start, end in sorted(outer, reverse=True):
        indent = re.match(r"[ \t]*", source[start:]).group()
        source = source[:start] + indent + SOLUTION_NOTE + source[end:]
    return source


def _role(cell, where: str) -> str | None:
    roles = [t for t in cell.metadata.get("tags", []) if t in ROLES]
    if len(roles) > 1:
        raise ValueError(f"{where}: tagged {roles}; a cell takes one of {list(ROLES)}")
    return roles[0] if roles else None


def student_notebook(nb, *, name: str = "notebook", source_sha256: str | None = None):
    """The student edition of the full-edition notebook ``nb``, as a new notebook (``nb`` is
    not changed). ``name`` and ``source_sha256`` (the full edition's file name and digest)
    go into the metadata and name the notebook in errors; without a digest, that of ``nb``
    as nbformat writes it. ValueError for markup that would leak or lose a solution."""
    import nbformat

    out = nbformat.from_dict(copy.deepcopy(dict(nb)))
    cells = []
    for index, cell in enumerate(out.cells):
        where = f"{name}, cell {index} (counting from 0)"
        role = _role(cell, where)
        if role == "solution":
            continue
        if cell.cell_type == "code":
            if role == "exercise":
                cell.source = _open_exercise(cell.source, where)
            elif _has_marker(cell.source):
                kind = "'check' cell" if role == "check" else "code cell not tagged 'exercise'"
                raise ValueError(f"{where}: a {kind} holds a solution marker; only an 'exercise' cell may")
            cell.outputs, cell.execution_count = [], None
        elif cell.cell_type == "markdown":
            cell.source = _fold_solutions(cell.source, where)
        cells.append(cell)
    out.cells = cells
    if source_sha256 is None:
        source_sha256 = hashlib.sha256(_text(nb).encode("utf-8")).hexdigest()
    out.metadata["draftalign"] = {"edition": "student", "source": name, "source_sha256": source_sha256}
    return out


def strip_markers(nb):
    """A copy of the full-edition notebook ``nb`` whose code cells lack the lines
    ``# BEGIN SOLUTION``, ``# END SOLUTION`` and the ``# HINT:`` line right after a BEGIN:
    the solution code reads cleanly in the rendered book. Lenient: it never raises."""
    out = copy.deepcopy(nb)
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        kept, after_begin = [], False
        for line in cell.source.split("\n"):
            if _is_marker(line, BEGIN) or _is_marker(line, END) or (after_begin and line.strip().startswith(HINT)):
                after_begin = _is_marker(line, BEGIN)
                continue
            after_begin = False
            kept.append(line)
        cell.source = "\n".join(kept)
    return out


def _text(nb) -> str:
    """A notebook as its file holds it (what nbformat.write writes)."""
    import nbformat

    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def _editions(src_dir: Path) -> dict[str, str]:
    """File name -> the student edition's text, for every chapter in ``src_dir``."""
    import nbformat

    chapters = sorted(src_dir.glob(CHAPTERS))
    if not chapters:
        raise FileNotFoundError(f"no chapter notebooks ({CHAPTERS}) in {src_dir}")
    out = {}
    for path in chapters:
        raw = path.read_bytes()
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        student = student_notebook(nb, name=path.name, source_sha256=hashlib.sha256(raw).hexdigest())
        out[path.name] = _text(student)
    return out


def _folders(src_dir, out_dir) -> tuple[Path, Path]:
    src = Path(src_dir) if src_dir else repo_root() / "notebooks"
    return src, Path(out_dir) if out_dir else src / "student"


def write_student_edition(src_dir: Path | str | None = None, out_dir: Path | str | None = None) -> list[Path]:
    """Write the student edition of every chapter in ``src_dir`` (default: the project's
    ``notebooks/``) into ``out_dir`` (default: ``<src_dir>/student/``), overwriting; a
    chapter file there with no source any more is removed. Every chapter is converted
    before anything is written, so a markup error leaves the folder as it was."""
    src, out = _folders(src_dir, out_dir)
    texts = _editions(src)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(CHAPTERS):
        if old.name not in texts:
            old.unlink()
    paths = []
    for file_name, text in texts.items():
        (out / file_name).write_text(text, encoding="utf-8")
        paths.append(out / file_name)
    return paths


def check_student_edition(src_dir: Path | str | None = None, out_dir: Path | str | None = None) -> list[Path]:
    """The student edition's files when they are what :func:`write_student_edition` would
    write now (regenerated in memory); else :class:`StaleStudentEdition` naming each
    missing, stale or extra file."""
    src, out = _folders(src_dir, out_dir)
    texts = _editions(src)
    problems = []
    for file_name, text in texts.items():
        path = out / file_name
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path} is stale: it differs from the edition of {src / file_name} written now")
    problems += [f"{p} has no source chapter in {src}" for p in sorted(out.glob(CHAPTERS)) if p.name not in texts]
    if problems:
        raise StaleStudentEdition("the student edition is out of date; run `make student` "
                                  "(draftalign book --student):\n  " + "\n  ".join(problems))
    return [out / n for n in texts]
