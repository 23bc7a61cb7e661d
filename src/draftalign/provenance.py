"""Provenance: versions, hardware and git revision, printed by every notebook's first
cell and stored with every benchmark record and artifact manifest. Reads the environment
only; writes nothing."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["versions", "hardware", "git_sha"]


def hardware() -> str:
    """CPU model (and GPU, if any) with the number of torch threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}; torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def git_sha(folder: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=folder).stdout.strip()
    except Exception:
        return "unknown"


def versions() -> dict:
    """Python, torch, transformers, draftalign versions, hardware and git revision."""
    import torch
    import transformers

    from . import __version__

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "draftalign": __version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "hardware": hardware(),
        "git": git_sha(),
    }
