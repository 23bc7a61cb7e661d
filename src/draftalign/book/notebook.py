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

__all__ = ["setup", "versions_table"]


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
        table = versions_table(P)
        try:
            from IPython.display import display
        except ImportError:  # a plain Python session
            print(table.to_string())
        else:
            display(table)
    return P
