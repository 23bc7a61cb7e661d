"""Data: packing text into blocks, the offline pretraining corpus, the built-in prompt
sets, the offline errors of the hub loaders, and artifact manifests."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

import draftalign.data as data_mod
import draftalign.models as models_mod
from draftalign.artifacts import is_complete, MANIFEST, read_manifest, write_manifest
from draftalign.corpus import pretraining_texts, texts_digest
from draftalign.data import CATEGORIES, load_hub_prompts, load_prompts, pack_blocks, stdlib_docstrings, web_texts

ROOT = Path(__file__).resolve().parents[1]
EOS = 2
TEXTS = ["Hello world.", "The quick brown fox jumps over the lazy dog.", "Short one.",
         "Speculative decoding lets a small draft model propose tokens that a large target verifies.",
         "def f(x):\n    return x + 1"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    """The tests run from the project folder."""
    monkeypatch.chdir(ROOT)


# ------------------------------------------------------------------ pack_blocks

def _stream(tokenizer, texts):
    out = []
    for t in texts:
        out += tokenizer(t, add_special_tokens=False)["input_ids"] + [EOS]
    return out


def test_pack_blocks_shape_eos_and_remainder(tokenizer):
    stream = _stream(tokenizer, TEXTS)
    block = 8
    assert len(stream) % block != 0  # so that a remainder is dropped
    blocks = pack_blocks(tokenizer, TEXTS, block)
    n = len(stream) // block
    assert blocks.shape == (n, block) and blocks.dtype == torch.long
    assert blocks.flatten().tolist() == stream[: n * block]  # remainder dropped, nothing padded
    # EOS exactly at the end of each document (within the kept part), nowhere else
    ends, pos = [], -1
    for t in TEXTS:
        pos += len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
        ends.append(pos)
    flat = blocks.flatten().tolist()
    assert [i for i, x in enumerate(flat) if x == EOS] == [e for e in ends if e < n * block]
    assert len([e for e in ends if e < n * block]) >= 3


def test_pack_blocks_max_blocks(tokenizer):
    full = pack_blocks(tokenizer, TEXTS, 5)
    two = pack_blocks(tokenizer, TEXTS, 5, max_blocks=2)
    assert two.shape == (2, 5) and torch.equal(two, full[:2])
    assert torch.equal(pack_blocks(tokenizer, TEXTS, 5, max_blocks=10_000), full)

    def texts():  # stops reading once it has enough tokens
        yield TEXTS[3]
        raise AssertionError("pack_blocks read more texts than max_blocks needs")

    one = pack_blocks(tokenizer, texts(), 4, max_blocks=1)
    assert one.tolist() == [_stream(tokenizer, [TEXTS[3]])[:4]]


def test_pack_blocks_errors(tokenizer):
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_blocks(tokenizer, ["Hi there."], 64)
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_blocks(tokenizer, [], 4)
    with pytest.raises(ValueError, match="block_size"):
        pack_blocks(tokenizer, TEXTS, 1)
    n = len(_stream(tokenizer, ["Hi there."]))
    assert pack_blocks(tokenizer, ["Hi there."], n).shape == (1, n)  # exactly one block is enough


# ------------------------------------------------------------------ corpus

@pytest.fixture(scope="module")
def stdlib_twice():
    return stdlib_docstrings(max_texts=600), stdlib_docstrings(max_texts=600)


def test_stdlib_docstrings_deterministic_and_substantial(stdlib_twice):
    a, b = stdlib_twice
    assert a == b
    assert len(a) == 600  # the cap is reached: the corpus has at least 600 texts
    assert len(set(a)) == len(a)
    for t in a:  # whitespace-normalised: single spaces, one newline between paragraphs
        assert "  " not in t and "\n\n" not in t and t == t.strip()
    assert sum(len(t) for t in a) > 200_000


def test_stdlib_docstrings_respect_min_chars(stdlib_twice):
    """Documented: "each at least ``min_chars`` long, whitespace-normalised" (default 200)."""
    short = [t for t in stdlib_twice[0] if len(t) < 200]
    assert not short, (f"{len(short)} texts shorter than min_chars=200 after normalisation, e.g. "
                       f"{len(short[0])} chars: {short[0][:80]!r}")


def test_texts_digest_and_pretraining_texts():
    assert texts_digest(["ab", "c"]) == texts_digest(["ab", "c"])
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])  # document boundaries count
    assert texts_digest(["ab", "c"]) != texts_digest(["c", "ab"])
    assert len(texts_digest([])) == 64
    with pytest.raises(ValueError, match="unknown corpus"):
        pretraining_texts("books")


# ------------------------------------------------------------------ prompts

def test_prompt_sets():
    distill, ev = load_prompts("distill"), load_prompts("eval")
    assert len(distill) >= 300 and len(ev) >= 60
    for rows in (distill, ev):
        assert {r["category"] for r in rows} == set(CATEGORIES)
        assert all(set(r) >= {"id", "category", "prompt"} and r["prompt"].strip() for r in rows)
        assert len({r["id"] for r in rows}) == len(rows)
        assert len({r["prompt"] for r in rows}) == len(rows)
    assert not {r["prompt"] for r in distill} & {r["prompt"] for r in ev}
    assert not {r["id"] for r in distill} & {r["id"] for r in ev}
    assert load_prompts() == distill  # the default split


def test_load_prompts_limit_and_categories():
    full = load_prompts("eval")
    small = load_prompts("eval", limit_per_category=2)
    assert len(small) == 2 * len(CATEGORIES)
    for c in CATEGORIES:
        assert [r for r in small if r["category"] == c] == [r for r in full if r["category"] == c][:2]
    assert [r["id"] for r in small] == [r["id"] for r in full if r in small]  # file order kept
    some = load_prompts("distill", categories=["code", "math"], limit_per_category=3)
    assert [r["category"] for r in some].count("code") == 3 and len(some) == 6
    assert {r["category"] for r in some} == {"code", "math"}


def test_load_prompts_errors():
    with pytest.raises(ValueError, match="split"):
        load_prompts("train")
    with pytest.raises(ValueError, match="unknown categories"):
        load_prompts("eval", categories=["code", "poetry"])


def test_load_prompts_outside_the_project(monkeypatch, tmp_path):
    """The prompt sets are package data: a wheel of the package, installed outside any
    checkout, loads them from a folder that is not the project; a package installed without
    them gets an error that says so."""
    import subprocess
    import sys
    import zipfile

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    site = tmp_path / "site"
    zipfile.ZipFile(next(wheels.glob("draftalign-*.whl"))).extractall(site)
    code = ("import draftalign.data as d; print(len(d.load_prompts('eval')), len(d.load_prompts('mt_bench')), "
            "d.prompts_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PATH": "", "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"})
    count_eval, count_mt, folder = out.stdout.split()
    assert (count_eval, count_mt) == ("72", "80") and folder.startswith(str(site)), out.stderr[-400:]
    monkeypatch.setattr(data_mod, "prompts_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="reinstall"):
        load_prompts("eval")


# ------------------------------------------------------------------ offline hub loaders

@pytest.fixture
def no_load_dataset(monkeypatch):
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


@pytest.mark.parametrize("name", ["databricks/databricks-dolly-15k", "OpenAssistant/oasst1"])
def test_load_hub_prompts_offline(monkeypatch, no_load_dataset, name):
    monkeypatch.setattr(data_mod, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(RuntimeError) as info:
        load_hub_prompts(name, limit=5)
    msg = str(info.value)
    assert name in msg and "unreachable" in msg and "load_prompts" in msg
    assert no_load_dataset == []  # refused before trying the network


def test_load_hub_prompts_failed_download(monkeypatch, no_load_dataset):
    monkeypatch.setattr(data_mod, "hub_reachable", lambda *a, **k: True)
    with pytest.raises(RuntimeError) as info:
        load_hub_prompts("databricks/databricks-dolly-15k")
    msg = str(info.value)
    assert "databricks/databricks-dolly-15k" in msg and "ConnectionError" in msg and "load_prompts" in msg
    assert isinstance(info.value.__cause__, ConnectionError)


def test_web_texts_offline(monkeypatch, no_load_dataset):
    monkeypatch.setattr(models_mod, "hub_reachable", lambda *a, **k: False)
    for call in (lambda: web_texts(n_texts=3), lambda: pretraining_texts("web", n_texts=3)):
        with pytest.raises(RuntimeError) as info:
            call()
        msg = str(info.value)
        assert "HuggingFaceFW/fineweb-edu" in msg and "unreachable" in msg and "stdlib_docstrings" in msg
    assert no_load_dataset == []
    monkeypatch.setattr(models_mod, "hub_reachable", lambda *a, **k: True)
    with pytest.raises(RuntimeError, match="ConnectionError"):
        web_texts("some/corpus", n_texts=3)


# ------------------------------------------------------------------ artifacts

def test_manifest_round_trip(tmp_path):
    folder = tmp_path / "stage"
    spec = {"stage": "pretrain", "draft": {"hidden_size": 64, "layers": (2, 3)}, "lr": 3e-3,
            "corpus": Path("/some/where"), "texts": None}
    assert read_manifest(folder) is None and not is_complete(folder, spec)
    record = write_manifest(folder, spec, inputs={"texts": 10}, results={"loss": 1.5})
    assert (folder / MANIFEST).exists() and not (folder / (MANIFEST + ".tmp")).exists()
    back = read_manifest(folder)
    assert back == json.loads(json.dumps(record, default=str))
    assert back["inputs"] == {"texts": 10} and back["results"] == {"loss": 1.5}
    assert {"python", "torch", "transformers", "draftalign"} <= set(back["versions"])
    assert back["finished"]
    # the spec as given (tuples, paths) matches what was stored as JSON
    assert is_complete(folder, spec)
    assert is_complete(folder, json.loads(json.dumps(spec, default=str)))


@pytest.mark.parametrize("change", [{"lr": 1e-3}, {"draft": {"hidden_size": 64, "layers": (2, 4)}},
                                    {"extra": 1}, {"texts": 0}])
def test_manifest_spec_mismatch(tmp_path, change):
    spec = {"stage": "pretrain", "draft": {"hidden_size": 64, "layers": (2, 3)}, "lr": 3e-3, "texts": None}
    write_manifest(tmp_path, spec)
    assert is_complete(tmp_path, spec)
    assert not is_complete(tmp_path, {**spec, **change})
    write_manifest(tmp_path, {**spec, **change})  # rewriting replaces the manifest
    assert is_complete(tmp_path, {**spec, **change}) and not is_complete(tmp_path, spec)
    assert read_manifest(tmp_path)["inputs"] == {} and read_manifest(tmp_path)["results"] == {}


def test_dolly_prompts_from_a_local_stand_in(monkeypatch):
    """The hub path with a small local dataset standing in for Dolly: categories mapped onto
    the book's, context appended after the instruction and capped in words."""
    import datasets

    rows = [{"instruction": "Summarize this.", "context": "Word. " * 1000, "category": "summarization"},
            {"instruction": "Which is a fish?", "context": "", "category": "classification"},
            {"instruction": "Tell me about tides.", "context": "Tides rise.", "category": "general_qa"}]
    monkeypatch.setattr(data_mod, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(rows))
    out = load_hub_prompts("databricks/databricks-dolly-15k", seed=0, max_context_words=50)
    assert len(out) == 3 and {r["category"] for r in out} == {"summarization", "classification", "open_qa"}
    long = next(r for r in out if r["category"] == "summarization")
    assert long["prompt"].startswith("Summarize this.\n\n") and len(long["prompt"].split()) <= 52
    assert next(r for r in out if r["category"] == "open_qa")["prompt"] == "Tell me about tides.\n\nTides rise."


# ------------------------------------------------------- self-instruct (Magpie) prompts


def _fake_rounds(monkeypatch, rounds):
    """Replace the target's sampling by scripted rounds; record each round's seed."""
    from draftalign import data as data_module

    seeds = []

    def fake_round(target, tokenizer, *, batch_size, seed, **_):
        seeds.append(seed)
        return list(rounds[len(seeds) - 1]) if len(seeds) <= len(rounds) else []

    monkeypatch.setattr(data_module, "self_instruct_round", fake_round)
    return seeds


def test_self_instruct_prompts_dedupes_and_stops_at_n(monkeypatch):
    from draftalign.data import self_instruct_prompts

    seeds = _fake_rounds(monkeypatch, [["Write a poem about rain.", "write a poem, about RAIN!"],
                                       ["Name three rivers in Europe.", "Write a poem about rain"],
                                       ["Explain what a prime number is.", "Summarise the news today."]])
    kept = self_instruct_prompts(None, None, 3, seed=10, batch_size=2)
    assert [k["prompt"] for k in kept] == ["Write a poem about rain.", "Name three rivers in Europe.",
                                           "Explain what a prime number is."]
    assert [k["id"] for k in kept] == ["self-0000", "self-0001", "self-0002"]
    assert {k["category"] for k in kept} == {"self_instruct"}
    assert seeds == [10, 11, 12], "one new seed per round, and no round after n are kept"


def test_self_instruct_prompts_rounds_are_bounded(monkeypatch):
    """Rounds that keep nothing stop at max_rounds; by default enough rounds for n at a keep
    rate of one in four (at least 20), so a large n is not cut at a handful of rounds."""
    from draftalign.data import self_instruct_prompts

    seeds = _fake_rounds(monkeypatch, [])
    assert self_instruct_prompts(None, None, 5, batch_size=8, max_rounds=3) == []
    assert len(seeds) == 3
    seeds.clear()
    self_instruct_prompts(None, None, 200, batch_size=8)
    assert len(seeds) == 100  # ceil(4 * 200 / 8)
    seeds.clear()
    self_instruct_prompts(None, None, 2, batch_size=8)
    assert len(seeds) == 20
    with pytest.raises(ValueError, match="n and batch_size"):
        self_instruct_prompts(None, None, 0)
