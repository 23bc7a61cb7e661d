"""Write a chapter notebook from a plain Python list of cells, outputs stripped.

    from nbtool import write_notebook
    write_notebook("notebooks/01_x.ipynb", [("md", "# Title"), ("code", "x = 1", ["parameters"])])

Also ``python tools/nbtool.py --strip notebooks/*.ipynb`` removes outputs in place, and
``python tools/nbtool.py --sync-repository`` writes the repository's address (``repository.url``
in ``book/_config.yml``, the one place it is set) into every chapter's Colab badge and install
cell and into the README.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def write_notebook(path: str, cells: list[tuple]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for kind, source, *rest in cells:
        tags = rest[0] if rest else []
        cell = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(source.strip("\n"))
        if tags:
            cell.metadata["tags"] = list(tags)
        cell.id = f"cell-{len(nb.cells):02d}"
        nb.cells.append(cell)
    nbformat.validator.normalize(nb)
    nbformat.write(nb, path)


def strip(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


def repository_url(root: Path = ROOT) -> str:
    """``repository.url`` of ``book/_config.yml``."""
    import yaml

    return yaml.safe_load((root / "book" / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def repository_places(text: str) -> list[str]:
    """Every GitHub repository address written in ``text`` (badges, clone commands, links)."""
    return re.findall(r"https://(?:colab\.research\.google\.com/)?github(?:\.com)?/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[/\"'\s)]|$)",
                      text)


def sync_repository(root: Path = ROOT) -> list[Path]:
    """Write :func:`repository_url` wherever a chapter or the README names the repository."""
    url = repository_url(root)
    slug = url.removeprefix("https://github.com/")
    changed = []
    for path in sorted((root / "notebooks").glob("*.ipynb")) + [root / "README.md"]:
        text = path.read_text(encoding="utf-8")
        new = re.sub(r"(https://(?:colab\.research\.google\.com/)?github(?:\.com)?/)[\w.-]+/[\w.-]+?(?=/blob/|\"|'|\s|\)|$)",
                     lambda m: m.group(1) + slug, text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:2] == ["--strip"]:
        for p in sys.argv[2:]:
            strip(p)
    elif sys.argv[1:2] == ["--sync-repository"]:
        for p in sync_repository():
            print(f"updated {p.relative_to(ROOT)}")
