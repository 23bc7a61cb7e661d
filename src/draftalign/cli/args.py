"""Argument types of the ``draftalign`` command: each fails with the flag's name before
anything loads, so a typo costs a second, not a training run."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["positive", "non_negative_float", "probability", "gammas", "model_folder", "data_folder", "target",
           "prompts", "loss", "new_folder", "budget"]


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability(text):
    value = non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def gammas(text):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every gamma must be >= 1, got {text!r}")
    return values


def model_folder(text):
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {path}")
    if not (path / "config.json").exists():
        raise argparse.ArgumentTypeError(f"{path} holds no config.json: not a model folder")
    return path


def data_folder(text):
    path = Path(text).expanduser()
    if not (path / "records.jsonl").exists():
        raise argparse.ArgumentTypeError(f"{path} holds no records.jsonl (write one with `draftalign generate`)")
    return path


def target(text):
    local = Path(text).expanduser()
    if local.exists() and not (local / "config.json").exists():
        raise argparse.ArgumentTypeError(f"{local} holds no config.json: not a model folder")
    if text.startswith(("/", "./", "../", "~")) and not local.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {local}")
    return text


def prompts(text):
    from ..data import SPLITS

    if text in SPLITS:
        return text
    path = Path(text).expanduser()
    if path.suffix == ".jsonl" and path.exists():
        return path
    raise argparse.ArgumentTypeError(f"want one of {', '.join(SPLITS)} or a .jsonl file of prompts, got {text!r}")


def loss(text):
    from ..losses import LOSSES

    if text not in LOSSES:
        raise argparse.ArgumentTypeError(f"unknown loss {text!r}; choose one of {', '.join(sorted(LOSSES))}")
    return text


def new_folder(text):
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    return path


def budget(text):
    """``STAGE=SECONDS``."""
    stage, sep, value = text.partition("=")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not sep or not stage or seconds <= 0:
        raise argparse.ArgumentTypeError(f"want STAGE=SECONDS with positive seconds, got {text!r}")
    return stage, seconds
