"""The package's layers, read from the source: the library never imports the book or the
command, the book never imports the command, and no module imports itself back through
others (at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "draftalign"
COMMAND = ("draftalign.cli", "draftalign.generate", "draftalign.reference")  # the command and its two aliases


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every draftalign module ``path`` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("draftalign")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("draftalign"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                sub = f"{mod}.{alias.name}"
                found.add(sub if (SRC.parent / (sub.replace(".", "/") + ".py")).exists()
                          or (SRC.parent / sub.replace(".", "/")).is_dir() else mod)
    return found - {name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def layer(module: str) -> str:
    if module.startswith(COMMAND):
        return "command"
    return "book" if module.startswith("draftalign.book") else "library"


def test_the_library_never_imports_the_book_or_the_command():
    bad = {m: sorted(i for i in deps if layer(i) != "library")
           for m, deps in graph().items() if layer(m) == "library"}
    assert not {m: d for m, d in bad.items() if d}


def test_the_book_never_imports_the_command():
    bad = {m: sorted(i for i in deps if layer(i) == "command") for m, deps in graph().items() if layer(m) == "book"}
    assert not {m: d for m, d in bad.items() if d and m != "draftalign.book.__main__"}


def test_no_import_cycles():
    full = graph()
    g = {m: {d for d in deps if d in full} for m, deps in full.items()}
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    # a package's __init__ importing its own submodules is how a package exposes them, not a cycle
    cycles = [c for c in cycles if not any(a == b.rsplit(".", 1)[0] for a, b in zip(c, c[1:]))]
    assert not cycles, cycles


def test_modules_stay_small():
    sizes = {module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in SRC.rglob("*.py")}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
