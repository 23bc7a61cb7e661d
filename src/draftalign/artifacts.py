"""Artifacts: folders a stage leaves for later chapters, each with a manifest.

Reads and writes ``<folder>/manifest.json``: the stage's spec (every setting that
determines the result), its inputs, versions and the time it finished. The manifest is
written last, so its presence marks a complete artifact; a chapter reuses an artifact
whose manifest spec equals the one it would build, and rebuilds it otherwise.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .provenance import versions

__all__ = ["read_manifest", "write_manifest", "is_complete", "SettingsMismatch", "CorruptFile",
           "clear_finished", "resume_or_restart", "atomic_write", "write_json", "read_json"]


class SettingsMismatch(ValueError):
    """A folder holds (part of) a run made with other settings: resuming would mix the two.
    ``folder`` is that folder; delete it or choose another to start afresh."""

    def __init__(self, message: str, folder):
        super().__init__(message)
        self.folder = Path(folder)


class CorruptFile(ValueError):
    """A file a stage wrote cannot be read back (torn, truncated, zero-filled, edited):
    the message names it and says what to do."""

    def __init__(self, message: str, path):
        super().__init__(message)
        self.path = Path(path)

MANIFEST = "manifest.json"


def atomic_write(path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it, then rename: a reader
    (or a run killed mid-write) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_json(path, value, *, indent: int | None = 2) -> Path:
    """``value`` as JSON at ``path``, atomically (:func:`atomic_write`)."""
    return atomic_write(path, json.dumps(value, indent=indent, default=str))


def read_json(path, default=None):
    """The JSON at ``path``, or ``default`` when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def read_manifest(folder) -> dict | None:
    return read_json(Path(folder) / MANIFEST)


def write_manifest(folder, spec: dict, *, inputs: dict | None = None, results: dict | None = None) -> dict:
    """Write the manifest (spec, inputs, results, versions, finish time); returns it."""
    record = {"spec": spec, "inputs": inputs or {}, "results": results or {}, "versions": versions(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(Path(folder) / MANIFEST, record)
    return record


def is_complete(folder, spec: dict) -> bool:
    """Whether ``folder`` holds a finished artifact built with exactly ``spec``."""
    manifest = read_manifest(folder)
    return manifest is not None and manifest["spec"] == json.loads(json.dumps(spec, default=str))


def clear_finished(folder) -> None:
    """A finished artifact (it has a manifest) that the caller is about to rebuild because
    its spec differs: moved aside to ``<folder>.previous`` (replacing an older one there),
    with a warning, so the stage starts afresh and nothing finished is destroyed (a target
    that fell back to its offline copy changes every spec; the hub's artifacts stay)."""
    import warnings

    folder = Path(folder)
    if read_manifest(folder) is not None:
        aside = folder.with_name(folder.name + ".previous")
        if aside.exists():
            shutil.rmtree(aside)
        folder.rename(aside)
        warnings.warn(f"{folder} was built with other settings; kept as {aside}, rebuilding", stacklevel=2)


def resume_or_restart(run):
    """``run()``, which resumes the partial work it finds (a training checkpoint, answers
    on disk); when that work was done with other settings it raises
    :class:`SettingsMismatch`, and that folder is cleared for a fresh start."""
    try:
        return run()
    except SettingsMismatch as exc:
        shutil.rmtree(exc.folder)
        return run()
