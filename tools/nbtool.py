"""Write a chapter notebook from a plain Python list of cells, outputs stripped.

    from nbtool import write_notebook
    write_notebook("notebooks/01_x.ipynb", [("md", "# Title"), ("code", "x = 1", ["parameters"])])

Also ``python tools/nbtool.py --strip notebooks/*.ipynb`` removes outputs in place.
"""

from __future__ import annotations

import sys

import nbformat


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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--strip"]:
        for p in sys.argv[2:]:
            strip(p)
