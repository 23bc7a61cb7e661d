"""The first cell of every chapter: one call that applies the book's notebook settings.

Reads a profile name (the papermill ``PROFILE`` parameter) and the environment (threads,
``$DRAFTALIGN_PROFILE_OVERRIDES``); writes
nothing to disk. :func:`setup` sets the process-wide state a chapter's output depends on
(the torch seed, optionally the profile's torch thread count, progress bars, warnings,
pandas' display precision), shows the versions table (:func:`draftalign.provenance.versions`)
and returns the :class:`~draftalign.profiles.Profile`. Importing this module changes nothing.
"""

from __future__ import annotations

import warnings

import pandas as pd

from .profiles import Profile, profile_for_run
from ..provenance import versions

__all__ = ["setup", "versions_table", "machine", "shown", "chapter_time"]


def chapter_time(number: str) -> str:
    """A chapter's line on how long it takes: measured on a CPU (the last full ``cpu`` run of
    the book, ``book/measured-times.json``) and estimated on GPUs from the ``colab``
    profile's work (:mod:`draftalign.book.estimates`; labelled as an estimate)."""
    from .estimates import estimate_minutes, measured_cpu_minutes
    from .profiles import get_profile, repo_root

    chapter = "App. A" if number == "06" else f"Ch. {int(number)}"
    measured = measured_cpu_minutes(repo_root())
    seconds = next((v for k, v in measured.get("seconds", {}).items() if k.startswith(number)), None)
    cpu = (f"With the `cpu` profile this chapter took {seconds / 60:.0f} min on {measured['hardware']} "
           f"(measured {measured['date']})" if seconds is not None else "Its CPU time is not measured yet")
    est = {gpu: estimate_minutes(get_profile("colab"), gpu)[chapter] for gpu in ("T4", "A100")}
    gpu = ", ".join(f"{'under a minute' if m < 1 else f'about {m:.0f} min'} on {g}" for g, m in est.items())
    return (f"**Time.** {cpu}. On a GPU with the `colab` profile: {gpu}, *estimated* from the chapter's "
            f"work, not measured (README, \"Colab or any CUDA machine\").")


def machine(model=None) -> str:
    """What computes here, for prose built from a run: "this CPU" or "this GPU (<name>)"
    (the device of ``model``, or the default device)."""
    import torch

    device = next(model.parameters()).device if model is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return f"this GPU ({torch.cuda.get_device_name(device)})"
    return "this CPU"


def shown(path) -> str:
    """A path as a page may print it: relative to the project, the runs folder or the
    home folder (``~/...``), never this machine's absolute layout."""
    import os
    from pathlib import Path

    from .profiles import repo_root

    path = Path(path).resolve()
    runs = os.environ.get("DRAFTALIGN_RUNS")
    for base, label in ((Path(runs).resolve() if runs else None, "$DRAFTALIGN_RUNS"), (repo_root(), None),
                        (Path.home().resolve(), "~")):
        if base is not None and path.is_relative_to(base):
            rel = path.relative_to(base)
            return f"{label}/{rel}" if label else str(rel)
    return str(path)


def versions_table(profile: Profile) -> pd.DataFrame:
    """Versions, hardware and git revision, and the profile's name: one ``value`` column."""
    return pd.Series(versions() | {"profile": profile.name}).to_frame("value")


def setup(profile: str, *, threads: bool = False, show: bool = True) -> Profile:
    """Apply a chapter's settings for ``profile`` and return that profile. Call it before
    importing the rest of the package (which imports transformers, and with it tqdm).

    - text progress bars are fine in an executed notebook: tqdm's warning about them is
      silenced, and transformers' download bars are turned off;
    - ``threads``: use the profile's torch thread count (``Profile.threads``), for chapters
      that time things (one thread drifts far less on a shared CPU); the training chapters
      keep torch's default, which their results were produced with;
    - ``torch.manual_seed(P.seed)``, and pandas shows 3 decimals;
    - ``$DRAFTALIGN_PROFILE_OVERRIDES`` (JSON) changes fields of the profile, which is
      then called ``<profile>-custom`` (:func:`~draftalign.profiles.profile_for_run`);
    - ``show``: display the versions table (:func:`versions_table`) below the cell.
    """
    from tqdm import TqdmWarning

    P = profile_for_run(profile)
    # before anything imports tqdm.auto (transformers does): its warning about widgets
    # would print in every executed notebook
    warnings.filterwarnings("ignore", category=TqdmWarning)
    import torch
    import transformers

    transformers.logging.disable_progress_bar()
    if threads and P.threads:
        torch.set_num_threads(P.threads)
    torch.manual_seed(P.seed)
    pd.set_option("display.precision", 3)
    if show:
        from .profiles import runs_dir

        print(f"artifacts of this profile: {shown(runs_dir(P))}/ (set DRAFTALIGN_RUNS to keep them elsewhere)")
        table = versions_table(P)
        try:
            from IPython.display import display
        except ImportError:  # a plain Python session
            print(table.to_string())
        else:
            display(table)
    return P
