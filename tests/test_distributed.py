"""Training on two CPU processes under ``accelerate launch`` (gloo) is training on one: the
same losses, statistics and weights for the same global batch, on pretraining batches and on
distillation batches whose answers differ in length; and a two-process run resumes exactly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent / "fixtures" / "data_parallel.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: Path, kind: str, processes: int, stop_after: int | None = None):
    args = [str(SCRIPT), str(out), kind] + ([str(stop_after)] if stop_after else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(ACCELERATE), "launch", "--cpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out / f"history-{stop_after}.csv"), torch.load(out / f"weights-{stop_after}.pt")


@pytest.mark.parametrize("kind", ["lm", "fkl", "tvd++"])
def test_two_processes_train_as_one(tmp_path, kind):
    one_history, one = run(tmp_path / "one", kind, 1)
    two_history, two = run(tmp_path / "two", kind, 2)
    for column in ("loss", "tokens", "grad_norm") + (("tvd", "top1", "eval_loss") if kind != "lm" else ()):
        assert two_history[column].to_numpy() == pytest.approx(one_history[column].to_numpy(), rel=1e-5, abs=1e-6,
                                                              nan_ok=True), column
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


def test_a_two_process_run_resumes_exactly(tmp_path):
    _, straight = run(tmp_path / "straight", "fkl", 2)
    run(tmp_path / "cut", "fkl", 2, stop_after=2)
    _, resumed = run(tmp_path / "cut", "fkl", 2)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)
