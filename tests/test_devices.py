"""Every function that makes a tensor, a generator or a cache takes the device from its
model or its inputs, never from torch's default: checked without a GPU by making the
default device ``meta`` (tensors without data) while the models stay on the CPU. A tensor
made on the default device then has no data: the call fails, or (a meta index into a CPU
embedding) computes zeros. So every check compares with the same call made normally: equal
tokens, equal losses, equal histories. This is the class of bug that breaks the book on a
GPU (a CPU tensor fed to a CUDA model), caught on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from draftalign.distill import distill, kd_loss_fn
from draftalign.distill_measures import gradient_variance, logit_gradient, sub_vocab_ceilings
from draftalign.distill import distill_examples
from draftalign.answers import generate_distillation_data
from draftalign.losses import tvd, tvdpp
from draftalign.speculative import autoregressive_generate, speculative_generate
from draftalign.timing import compare_decoders, pass_cost
from draftalign.train import Batches, lm_loss, train, TrainConfig

V = 32
ROWS = [{"prompt_ids": [1, 5, 6], "response_ids": [7, 8, 9, 10]},
        {"prompt_ids": [1, 4], "response_ids": [11, 5, 3]},
        {"prompt_ids": [1, 9, 9, 8], "response_ids": [6, 2]}]


@pytest.fixture(scope="module")
def pair(tiny_llama):
    return (tiny_llama(vocab_size=V, seed=0, eos_token_id=None, init_std=0.3),
            tiny_llama(vocab_size=V, seed=1, eos_token_id=None, init_std=0.3))


def on_meta(fn):
    """Run ``fn`` with torch's default device set to ``meta`` (models and inputs on the CPU)."""
    with torch.device("meta"):
        return fn()


def test_the_probe_catches_a_tensor_made_on_the_default_device(pair):
    """The premise: inside the probe, a tensor made without a device has no data, and a CPU
    model fed one does not compute what it computes normally."""
    target, _ = pair
    with pytest.raises(NotImplementedError):
        on_meta(lambda: torch.zeros(3).tolist())
    normal = target(torch.tensor([[1, 2, 3]])).logits
    try:
        probed = on_meta(lambda: target(torch.tensor([[1, 2, 3]])).logits)
    except (NotImplementedError, RuntimeError):
        return
    assert probed.device.type == "meta" or not torch.equal(probed, normal)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoding_follows_the_models(pair, temperature):
    target, draft = pair
    ids = torch.tensor([[1, 5, 6, 7]])

    def spec():
        return speculative_generate(target, draft, ids, max_new_tokens=8, gamma=3, temperature=temperature, seed=0)

    def plain():
        return autoregressive_generate(target, ids, max_new_tokens=8, temperature=temperature, seed=0)

    for fn in (spec, plain):
        probed, normal = on_meta(fn), fn()
        assert probed.tokens == normal.tokens and probed.accepted == normal.accepted


def test_timing_follows_the_model(pair):
    target, draft = pair
    cost = on_meta(lambda: pass_cost(target, prefix_len=4, ks=(1, 3), repeats=1))
    assert list(cost.k) == [1, 3]
    prompts = [torch.tensor([[1, 5, 6]]), torch.tensor([[1, 7]])]
    table, _ = on_meta(lambda: compare_decoders(
        {"plain": lambda x: autoregressive_generate(target, x, max_new_tokens=4),
         "spec": lambda x: speculative_generate(target, draft, x, max_new_tokens=4, gamma=2)},
        prompts, rounds=1, progress=False))
    assert set(table.index) == {"plain", "spec"}


@pytest.mark.parametrize("loss, options", [("fkl", {}), ("tvd++", {}), ("tvd++", {"estimator": "sampled"})])
def test_kd_losses_follow_the_batch(pair, loss, options):
    target, draft = pair
    batch = Batches(distill_examples(ROWS, max_length=32), pad_id=0).get([0, 1, 2])
    torch.manual_seed(0)  # the sampled estimator draws with torch's global generator
    value, stats = on_meta(lambda: kd_loss_fn(target, loss, **options)(draft, batch))
    torch.manual_seed(0)
    expected, expected_stats = kd_loss_fn(target, loss, **options)(draft, batch)
    assert torch.allclose(value, expected) and stats == pytest.approx(expected_stats)


def test_batches_are_built_on_the_cpu_whatever_the_default():
    batch = on_meta(lambda: Batches(distill_examples(ROWS, max_length=32), pad_id=0).get([0, 2]))
    assert {v.device.type for v in batch.values()} == {"cpu"}


def test_gradient_harness_and_ceilings_follow_their_inputs(pair):
    target, _ = pair
    d = torch.randn(1, 5, V, generator=torch.Generator().manual_seed(0))
    t = torch.randn(1, 5, V, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(2))
    g = on_meta(lambda: logit_gradient(tvdpp, d, t, labels=labels, estimator="sampled"))
    assert torch.equal(g, logit_gradient(tvdpp, d, t, labels=labels, estimator="sampled"))
    table = on_meta(lambda: gradient_variance({"tvd": (tvd, {})}, d, t, labels=labels, seeds=2))
    assert table.loc["tvd", "relative variance"] < 1e-10
    keep = torch.tensor([1, 2, 5, 7])
    mass, top_in = on_meta(lambda: sub_vocab_ceilings(target, ROWS, keep))
    expected_mass, expected_top = sub_vocab_ceilings(target, ROWS, keep)
    assert mass.shape == (9,) and torch.allclose(mass, expected_mass) and torch.equal(top_in, expected_top)


def test_training_and_distillation_follow_the_model(pair, tmp_path):
    import datasets

    target, draft = pair
    data = Batches(distill_examples(ROWS, max_length=32), pad_id=0)
    ds = datasets.Dataset.from_list([dict(r, index=i) for i, r in enumerate(ROWS)])
    cfg = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_every=1, checkpoint_every=1)
    histories = {}
    for name, run in (("probed", on_meta), ("normal", lambda fn: fn())):
        student = type(draft)(draft.config)
        student.load_state_dict(draft.state_dict())
        lm = run(lambda: train(student, data, cfg, tmp_path / name / "lm", loss_fn=lm_loss, eval_data=data,
                               progress=False))
        kd = run(lambda: distill(student, target, ds, tmp_path / name / "kd", loss="tvd++", cfg=cfg,
                                 max_length=32, eval_dataset=ds, progress=False))
        histories[name] = (lm, kd)
    for probed, normal in zip(histories["probed"], histories["normal"]):
        assert len(probed) == 2
        cols = [c for c in normal.columns if c not in ("tokens_per_s", "elapsed_s", "seconds", "time_s")
                and normal[c].dtype.kind == "f"]
        assert probed[cols].to_numpy() == pytest.approx(normal[cols].to_numpy(), nan_ok=True)


def test_generation_of_distillation_data_follows_the_target(tmp_path, tiny_llama, tokenizer):
    target = tiny_llama(vocab_size=len(tokenizer), hidden_size=16, eos_token_id=tokenizer.eos_token_id,
                        max_position_embeddings=256)
    kw = dict(max_new_tokens=4, temperature=0.7, top_p=1.0, batch_size=2, seed=0, topk=3, progress=False)
    prompts = ["Name a river.", "Say hi."]
    probed = on_meta(lambda: generate_distillation_data(target, tokenizer, prompts, tmp_path / "probed", **kw))
    normal = generate_distillation_data(target, tokenizer, prompts, tmp_path / "normal", **kw)
    assert probed["response_ids"] == normal["response_ids"] and len(probed) == 2


def test_resume_follows_the_model(pair, tmp_path):
    """A run stopped after one step and resumed with the probe on (the checkpoint, its
    optimizer state and its CPU random state loaded to the CPU first, then to the model's
    device) ends where an uninterrupted run ends."""
    _, draft = pair
    data = Batches(distill_examples(ROWS, max_length=32), pad_id=0)
    cfg = TrainConfig(max_steps=3, batch_size=2, warmup_steps=1, eval_every=10, checkpoint_every=1)

    def fresh():
        model = type(draft)(draft.config)
        model.load_state_dict(draft.state_dict())
        return model

    whole = fresh()
    train(whole, data, cfg, tmp_path / "whole", progress=False)
    resumed = fresh()
    train(resumed, data, cfg, tmp_path / "resumed", progress=False, stop_after=1)
    resumed, calls = fresh(), []

    def counted(model, batch):
        calls.append(1)
        return lm_loss(model, batch)

    on_meta(lambda: train(resumed, data, cfg, tmp_path / "resumed", loss_fn=counted, progress=False))
    assert len(calls) == 2, "resumed from the checkpoint after step 1, not restarted"
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
