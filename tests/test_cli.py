"""The ``draftalign`` command: every argument checked before a model loads, ``--help`` with an
example for each subcommand, and the whole path (pretrain, generate, distill, evaluate,
export with GGUF, check, bench) end to end for a chat target other than the embedded one:
a tiny randomly initialised Qwen2 model with SmolLM2's tokenizer, saved as a folder.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from draftalign import cli


@pytest.fixture(scope="module")
def qwen_target(tmp_path_factory, tokenizer):
    """A tiny Qwen2 chat 'target' folder (random weights, real chat template and tokenizer)."""
    folder = tmp_path_factory.mktemp("qwen")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # answers that end: make the end-of-turn token likely
        model.lm_head.weight[2] += 0.5 * model.lm_head.weight.std()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "mine.jsonl"
    rows = [{"id": i, "category": c, "prompt": p} for i, (c, p) in enumerate([
        ("qa", "Why is the sea salty?"), ("qa", "Name three planets."), ("writing", "Write one line about tea.")])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,flag", [
    (["distill", "--draft", "/no/such", "--data", "x", "--out", "y"], "--draft"),
    (["generate", "--out", "o", "--samples", "0"], "--samples"),
    (["generate", "--out", "o", "--top-p", "1.5"], "--top-p"),
    (["generate", "--out", "o", "--temperature", "-1"], "--temperature"),
    (["generate", "--out", "o", "--prompts", "nonsense"], "--prompts"),
    (["bench", "--draft", "/no/such", "--gammas", "0"], "--draft"),
    (["evaluate", "--draft", "/no/such"], "--draft"),
    (["pretrain", "--out", "o", "--steps", "-3"], "--steps"),
    (["pretrain", "--target", "/no/such/model", "--out", "o"], "--target"),
])
def test_bad_arguments_fail_before_anything_loads(monkeypatch, capsys, argv, flag):
    def never(*_, **__):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("draftalign.models.load_target", never)
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_bad_gammas_and_losses_name_the_flag(tmp_path, capsys, qwen_target):
    for argv, flag in ((["bench", "--draft", str(qwen_target), "--gammas", "0,2"], "--gammas"),
                       (["distill", "--draft", str(qwen_target), "--data", str(tmp_path), "--out", "o",
                         "--loss", "bogus"], "--data")):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(cli.EXAMPLES))
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and cli.EXAMPLES[command].split()[1] == command


# -- end to end, for another chat model ----------------------------------------------------------------

def test_the_whole_path_for_a_qwen2_target(qwen_target, prompt_file, tmp_path, capsys, monkeypatch):
    t = ["--target", str(qwen_target), "--threads", "1"]
    assert cli.main(["pretrain", *t, "--out", str(tmp_path / "pre"), "--corpus", "stdlib", "--texts", "40",
                     "--hidden", "16", "--layers", "1", "--heads", "2", "--intermediate", "32", "--block", "32",
                     "--steps", "2", "--batch", "2", "--init", "target"]) == 0
    assert cli.main(["generate", *t, "--out", str(tmp_path / "answers"), "--prompts", str(prompt_file),
                     "--samples", "2", "--max-new-tokens", "8", "--temperature", "0.7", "--batch-size", "3",
                     "--topk", "4"]) == 0
    records = (tmp_path / "answers" / "records.jsonl").read_text().splitlines()
    assert len(records) == 6
    for cached in ([], ["--cached"]):
        out = tmp_path / f"fkl{len(cached)}"
        with monkeypatch.context() as m:
            if cached:  # the cached top-k stands for the target: its weights are never loaded
                m.setattr("draftalign.models.load_target", lambda *a, **k: pytest.fail("the target was loaded"))
            assert cli.main(["distill", *t, "--draft", str(tmp_path / "pre"), "--data", str(tmp_path / "answers"),
                             "--out", str(out), "--loss", "fkl", "--steps", "2", "--batch", "2", *cached]) == 0
        assert (out / "config.json").exists()
    assert cli.main(["evaluate", *t, "--draft", str(tmp_path / "fkl0"), "--prompts", str(prompt_file),
                     "--gamma", "2", "--max-new-tokens", "6"]) == 0
    assert "all" in capsys.readouterr().out
    assert cli.main(["export", *t, "--draft", str(tmp_path / "fkl0"), "--out", str(tmp_path / "hf"),
                     "--gguf", str(tmp_path / "d.gguf"), "--bf16"]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert loaded.config.vocab_size == 49152 and loaded.dtype == torch.bfloat16
    assert (tmp_path / "d.gguf").stat().st_size > 0
    assert cli.main(["check", *t, "--draft", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "transformers  ok" in out and "vllm          ok" in out
    # transformers' assisted generation with the exported draft gives the target's greedy output
    target = AutoModelForCausalLM.from_pretrained(qwen_target)
    ids = torch.tensor([[1, 504, 3575, 282]])
    plain = target.generate(ids, do_sample=False, max_new_tokens=8)
    assisted = target.generate(ids, do_sample=False, max_new_tokens=8, assistant_model=loaded.float())
    assert torch.equal(plain, assisted)
    assert cli.main(["bench", *t, "--draft", str(tmp_path / "hf"), "--gammas", "1,2", "--prompts", str(prompt_file),
                     "--n", "2", "--rounds", "1", "--max-new-tokens", "6", "--hf",
                     "--json", str(tmp_path / "bench.json")]) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    methods = [r["method"] for r in record["table"]]
    assert methods == ["plain", "transformers, plain", "gamma=1", "gamma=2", "transformers, gamma=1",
                       "transformers, dynamic"]


def test_check_reports_an_incompatible_draft(qwen_target, tmp_path, capsys, tiny_llama):
    small = tiny_llama(vocab_size=300, hidden_size=8)
    small.save_pretrained(tmp_path / "small")
    assert cli.main(["check", "--target", str(qwen_target), "--draft", str(tmp_path / "small")]) == 1
    out = capsys.readouterr().out
    assert "transformers  NO" in out and "vocab_size 300" in out


@pytest.mark.parametrize("argv,flag", [
    (["-m", "draftalign.cli", "recipe", "--loss", "bogus"], "--loss"),
    (["-m", "draftalign.cli", "recipe", "--draft", "nonsense"], "--draft"),
    (["-m", "draftalign.generate", "--out", "x", "--samples", "0"], "--samples"),
    (["-m", "draftalign.cli", "bench", "--gammas", "0"], "--gammas"),
    (["-m", "draftalign.cli", "bench", "--draft", "/nonexistent"], "--draft"),
    (["-m", "draftalign.reference", "--stages", "bogus"], "--stages"),
    (["-m", "draftalign.reference", "--budget", "kd=-3"], "--budget"),
    (["-m", "draftalign.cli", "study", "--seeds", "x"], "--seeds"),
    (["-m", "draftalign.book", "--profile", "nope"], "--profile"),
])
def test_scripts_check_their_arguments_first(argv, flag):
    """Every entry point (the command, its aliases, the book's subcommands) fails on a bad flag
    within seconds, naming it (before any model loads)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and flag in proc.stderr, proc.stderr[-500:]
    assert "Loading" not in proc.stderr and time.perf_counter() - start < 60


def test_bench_on_llama_cpp_refuses_what_it_cannot_do(monkeypatch, tmp_path):
    """--engine llama.cpp needs a draft folder and takes neither --bounds nor --hf; without
    llama.cpp's binaries it says how to build them, before any export."""
    def never(*_, **__):
        raise AssertionError("nothing should be loaded or exported")

    monkeypatch.setattr("draftalign.llamacpp.benchmark", never)
    with pytest.raises(SystemExit, match="give --draft"):
        cli.main(["bench", "--engine", "llama.cpp", "--bounds"])
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="without --bounds or --hf"):
        cli.main(["bench", "--engine", "llama.cpp", "--draft", str(draft), "--hf"])
    monkeypatch.setenv("DRAFTALIGN_LLAMA_CPP", str(tmp_path / "none"))
    monkeypatch.setattr("draftalign.llamacpp.__file__", str(tmp_path / "src" / "pkg" / "llamacpp.py"))
    with pytest.raises(SystemExit, match="make llama-cpp"):
        cli.main(["bench", "--engine", "llama.cpp", "--draft", str(draft)])


def test_target_shell_has_the_shape_and_no_weights(qwen_target):
    from draftalign.models import target_shell, vocab_size

    shell = target_shell(str(qwen_target))
    real = AutoModelForCausalLM.from_pretrained(qwen_target)
    assert all(p.is_meta for p in shell.parameters())
    assert vocab_size(shell) == vocab_size(real) and shell.config.eos_token_id == real.config.eos_token_id
