"""The training loop: exact resume, config checks, the learning-rate schedule, the data
order of ``Batches``, the saved model, and the masked loss ``lm_loss``.

Everything runs on tiny random Llamas (vocabulary 32, hidden 16, one layer) and random
packed blocks, in a few seconds on a CPU.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from draftalign.train import Batches, history_of, lm_loss, lr_at, train, TrainConfig

VOCAB = 32
CFG = TrainConfig(max_steps=6, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=2, eval_every=3,
                  eval_batches=2, checkpoint_every=4, seed=5)
COMPARED = ["step", "lr", "loss", "top1", "tokens", "grad_norm", "eval_loss", "eval_top1"]


def _model(tiny_llama, seed=0):
    return tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, seed=seed,
                      max_position_embeddings=32)


def _blocks(n, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=gen)


@pytest.fixture(scope="module")
def data():
    return Batches({"input_ids": _blocks(20)}, seed=1), Batches({"input_ids": _blocks(6, seed=1)})


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, data, tmp_path_factory):
    """``(model, history, out_dir)`` of a run that never stopped."""
    out = tmp_path_factory.mktemp("uninterrupted")
    model = _model(tiny_llama)
    history = train(model, data[0], CFG, out, eval_data=data[1], progress=False)
    return model, history, out


def _same_params(a, b):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


def _same_history(h1: pd.DataFrame, h2: pd.DataFrame):
    assert len(h1) == len(h2)
    for col in COMPARED:
        a, b = h1[col].tolist(), h2[col].tolist()
        assert [x if x == x else "nan" for x in a] == [x if x == x else "nan" for x in b], col


def test_uninterrupted_history(uninterrupted, data):
    """One row per step, with the scheduled lr, all tokens counted, evaluation rows
    every ``eval_every`` steps and at the end, and the model changed by training."""
    model, h, _ = uninterrupted
    assert h["step"].tolist() == list(range(1, CFG.max_steps + 1))
    assert h["lr"].tolist() == pytest.approx([lr_at(s, CFG) for s in range(CFG.max_steps)], rel=1e-12)
    # every position of a packed block but the first is a target
    assert h["tokens"].tolist() == [CFG.batch_size * CFG.grad_accum * 11.0] * CFG.max_steps
    has_eval = h["eval_loss"].notna().tolist()
    assert has_eval == [False, False, True, False, False, True]
    assert not model.training  # left in eval mode
    assert (h["loss"] > 0).all() and h["loss"].map(math.isfinite).all()


@pytest.mark.parametrize("k", [1, 3, 4])
def test_stop_and_resume_is_exact(tiny_llama, data, uninterrupted, tmp_path, k):
    ref_model, ref_hist, _ = uninterrupted
    first = _model(tiny_llama)
    part = train(first, data[0], CFG, tmp_path, eval_data=data[1], stop_after=k, progress=False)
    assert len(part) == k and (tmp_path / "checkpoint" / "state.pt").exists()
    assert not (tmp_path / "config.json").exists()  # not finished: no model saved yet
    with pytest.raises(FileNotFoundError):
        history_of(tmp_path)

    resumed = _model(tiny_llama, seed=7)  # other initial weights: all come from the checkpoint
    hist = train(resumed, data[0], CFG, tmp_path, eval_data=data[1], progress=False)
    _same_params(resumed, ref_model)
    _same_history(hist, ref_hist)


def test_crash_between_checkpoints_resumes_from_the_last_one(tiny_llama, data, uninterrupted, tmp_path):
    """A run dies in step 6 (after the checkpoint of step 4): started again it redoes
    steps 5 and 6 and ends with the uninterrupted run's weights."""
    ref_model, ref_hist, _ = uninterrupted
    calls = 0

    def dying_loss(model, batch):
        nonlocal calls
        calls += 1
        if calls > 5 * CFG.grad_accum:  # the first micro-batch of step 6
            raise RuntimeError("killed")
        return lm_loss(model, batch)

    with pytest.raises(RuntimeError, match="killed"):
        train(_model(tiny_llama), data[0], CFG, tmp_path, eval_data=data[1], loss_fn=dying_loss, progress=False)
    resumed = _model(tiny_llama, seed=3)
    hist = train(resumed, data[0], CFG, tmp_path, eval_data=data[1], progress=False)
    _same_params(resumed, ref_model)
    _same_history(hist, ref_hist)


def test_resume_with_another_config_is_refused(tiny_llama, data, tmp_path):
    train(_model(tiny_llama), data[0], CFG, tmp_path, stop_after=2, progress=False)
    other = TrainConfig(**{**CFG.__dict__, "lr": 5e-3})
    with pytest.raises(ValueError, match="another config"):
        train(_model(tiny_llama), data[0], other, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config"):
        train(_model(tiny_llama), data[0], TrainConfig(**{**CFG.__dict__, "max_steps": 8}), tmp_path,
              progress=False)
    # resume=False starts afresh instead
    hist = train(_model(tiny_llama), data[0], other, tmp_path, resume=False, stop_after=1, progress=False)
    assert hist["step"].tolist() == [1] and hist["lr"].tolist() == [lr_at(0, other)]


def test_train_config_checks():
    with pytest.raises(ValueError):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError):
        TrainConfig(max_steps=1, grad_accum=0)
    with pytest.raises(ValueError, match="autocast"):
        TrainConfig(max_steps=1, autocast="fp8")


def test_dtype_policy_on_the_cpu_and_refusal_of_16_bit_weights(tiny_llama, tmp_path):
    """On the CPU training computes in fp32 unless asked; fp16 autocast gets a gradient
    scaler and still trains; weights that are not fp32 are refused (AdamW steps below
    bf16's spacing would be lost)."""
    from draftalign.models import half_dtype
    from draftalign.train import autocast_dtype

    cpu = torch.device("cpu")
    assert half_dtype(cpu) is None
    assert autocast_dtype(TrainConfig(max_steps=1), cpu) is None
    assert autocast_dtype(TrainConfig(max_steps=1, autocast="bf16"), cpu) == torch.bfloat16
    assert autocast_dtype(TrainConfig(max_steps=1, autocast="fp16"), cpu) == torch.float16
    data = Batches({"input_ids": torch.randint(0, 32, (8, 10))})
    model = tiny_llama(vocab_size=32, seed=3)
    history = train(model, data, TrainConfig(max_steps=2, batch_size=4, autocast="bf16"), tmp_path / "bf16",
                    progress=False)
    assert len(history) == 2 and next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="fp32 master weights"):
        train(tiny_llama(vocab_size=32, seed=3).to(torch.bfloat16), data, TrainConfig(max_steps=1),
              tmp_path / "low", progress=False)


def test_a_t4_computes_in_fp16_with_a_gradient_scaler(monkeypatch, tiny_llama, tmp_path):
    """A T4 (compute capability 7.5) only emulates bf16, though torch.cuda.is_bf16_supported()
    says True: the dtype policy must pick fp16 there, and training fp16 must scale its
    gradients. An A100 (8.0) gets bf16 and no scaler."""
    import draftalign.train as train_mod
    from draftalign.models import half_dtype
    from draftalign.train import autocast_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers
    for capability, want in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_, c=capability: c)
        assert half_dtype("cuda") == want
        assert autocast_dtype(TrainConfig(max_steps=1), torch.device("cuda")) == want
    made = []

    class Scaler(torch.amp.GradScaler):  # what train() builds, recorded
        def __init__(self, device, enabled=True, **kw):
            made.append(enabled)
            super().__init__("cpu", enabled=enabled, **kw)

    monkeypatch.setattr(train_mod.torch.amp, "GradScaler", Scaler)
    data = Batches({"input_ids": torch.randint(0, 32, (8, 10))})
    train(tiny_llama(vocab_size=32, seed=3), data, TrainConfig(max_steps=1, batch_size=4, autocast="fp16"),
          tmp_path / "fp16", progress=False)
    train(tiny_llama(vocab_size=32, seed=3), data, TrainConfig(max_steps=1, batch_size=4, autocast="bf16"),
          tmp_path / "bf16", progress=False)
    assert made == [True, False]


def test_lr_schedule():
    cfg = TrainConfig(max_steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    warm = [lr_at(s, cfg) for s in range(10)]
    assert warm == pytest.approx([1e-4 * (s + 1) for s in range(10)])  # linear from lr / warmup
    assert lr_at(9, cfg) == pytest.approx(1e-3) == lr_at(10, cfg)  # the peak ends the warmup
    floor = 1e-4
    assert lr_at(60, cfg) == pytest.approx(floor + (1e-3 - floor) / 2)  # half way down the cosine
    assert lr_at(35, cfg) == pytest.approx(floor + (1e-3 - floor) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg) == pytest.approx(floor)
    assert lr_at(500, cfg) == pytest.approx(floor)  # stays at the floor
    after = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a > b for a, b in zip(after, after[1:]))
    no_warmup = TrainConfig(max_steps=10, lr=2e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, no_warmup) == pytest.approx(2e-3) and lr_at(10, no_warmup) == pytest.approx(0.0)


def test_loss_decreases_on_a_learnable_sequence(tiny_llama, tmp_path):
    """A fixed sequence repeated: each token determines the next, so a one-layer model
    learns it within 30 steps."""
    seq = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:16]
    data = Batches({"input_ids": seq.repeat(8, 1)}, seed=0)
    cfg = TrainConfig(max_steps=30, batch_size=4, lr=1e-2, warmup_steps=3, checkpoint_every=100)
    model = _model(tiny_llama, seed=2)
    with torch.no_grad():
        before, _ = lm_loss(model, data.batch(0, 4))
    h = train(model, data, cfg, tmp_path, progress=False)
    with torch.no_grad():
        after, stats = lm_loss(model, data.batch(0, 4))
    assert h["loss"].iloc[0] == pytest.approx(float(before), rel=1e-5)
    assert float(before) > 3.0  # about log(32) at random initialisation
    assert h["loss"].iloc[-5:].mean() < 0.5 * h["loss"].iloc[:5].mean()
    assert float(after) < 0.5 * float(before)
    assert stats["top1"] > 0.5


def test_finished_run_loads_with_from_pretrained(uninterrupted):
    model, hist, out = uninterrupted
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _blocks(3, seed=9)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    saved = history_of(out)
    assert saved["step"].tolist() == hist["step"].tolist()
    assert saved["loss"].tolist() == pytest.approx(hist["loss"].tolist(), rel=1e-12)
    assert (out / "train_config.json").exists() and (out / "checkpoint" / "state.pt").exists()


# ------------------------------------------------------------------ Batches

def test_batches_cover_each_example_once_per_epoch():
    n = 10
    b = Batches({"input_ids": _blocks(n)}, seed=3)
    stream = b.indices(0, 4 * n)
    epochs = [stream[e * n:(e + 1) * n] for e in range(4)]
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert len({tuple(e) for e in epochs}) == 4  # a fresh permutation every epoch
    assert epochs[0] != list(range(n))


def test_batches_order_depends_only_on_seed_and_position():
    n = 7
    a = Batches({"input_ids": _blocks(n)}, seed=4)
    full = a.indices(0, 30)
    fresh = Batches({"input_ids": _blocks(n, seed=5)}, seed=4)  # other data, same seed
    assert fresh.indices(25, 5) == full[25:30]  # asked out of order, on a fresh object
    assert fresh.indices(3, 9) == full[3:12]  # across an epoch boundary, after a later epoch
    assert fresh.indices(25, 5) == full[25:30]
    assert [fresh.indices(p, 1)[0] for p in range(30)] == full
    assert Batches({"input_ids": _blocks(n)}, seed=5).indices(0, 30) != full


def test_batches_dict_rows_and_default_mask():
    ids = _blocks(6)
    mask = (torch.arange(12) % 2).repeat(6, 1)
    b = Batches({"input_ids": ids, "loss_mask": mask}, seed=2)
    idx = b.indices(4, 3)
    got = b.batch(4, 3)
    assert torch.equal(got["input_ids"], ids[idx]) and torch.equal(got["loss_mask"], mask[idx])
    plain = Batches({"input_ids": ids}, seed=2).batch(4, 3)
    assert torch.equal(plain["input_ids"], ids[idx])
    assert torch.equal(plain["loss_mask"], torch.ones(3, 12, dtype=ids.dtype))
    with pytest.raises(ValueError):
        Batches({"input_ids": ids, "loss_mask": mask[:5]})
    with pytest.raises(ValueError):
        Batches([])


def test_batches_pad_variable_length_examples():
    examples = [{"input_ids": torch.tensor([5, 6, 7])},
                {"input_ids": torch.tensor([8, 9]), "loss_mask": torch.tensor([0, 1])},
                {"input_ids": torch.tensor([4, 3, 2, 1, 11]), "loss_mask": torch.tensor([0, 0, 1, 1, 1])}]
    b = Batches(examples, pad_id=30, seed=0)
    assert len(b) == 3
    got = b.get([0, 1, 2])
    assert got["input_ids"].tolist() == [[5, 6, 7, 30, 30], [8, 9, 30, 30, 30], [4, 3, 2, 1, 11]]
    assert got["loss_mask"].tolist() == [[1, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert got["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    two = b.get([1, 0])  # padded to the longest of the batch only
    assert two["input_ids"].tolist() == [[8, 9, 30], [5, 6, 7]]
    assert two["loss_mask"].tolist() == [[0, 1, 0], [1, 1, 1]]


# ------------------------------------------------------------------ lm_loss

def _hand_loss(model, ids, mask):
    """Masked next-token cross-entropy written out position by position."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
    total, count, hits = 0.0, 0.0, 0.0
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                total -= float(logp[b, t - 1, ids[b, t]])
                hits += float(logp[b, t - 1].argmax() == ids[b, t])
                count += 1
    return total / count, hits / count, count


def test_lm_loss_is_masked_cross_entropy(tiny_llama):
    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, seed=1, init_std=0.3)
    ids = _blocks(3, length=10, seed=2)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 1, 1, 0],
                         [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
                         [1, 0, 1, 0, 1, 0, 1, 0, 1, 1]])
    with torch.no_grad():
        loss, stats = lm_loss(model, {"input_ids": ids, "loss_mask": mask})
    want, top1, count = _hand_loss(model, ids, mask)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert stats["tokens"] == count == 16 and stats["top1"] == pytest.approx(top1)
    flipped = mask.clone()
    flipped[:, 0] = 1 - flipped[:, 0]
    with torch.no_grad():
        full, _ = lm_loss(model, {"input_ids": ids, "loss_mask": torch.ones_like(ids)})
        again, _ = lm_loss(model, {"input_ids": ids, "loss_mask": flipped})
    # the unmasked loss differs (so the mask matters in this example)
    assert abs(float(full) - want) > 1e-3
    # the first position is never a target: its mask is irrelevant
    assert torch.equal(again, loss)


def test_lm_loss_ignores_masked_targets(tiny_llama):
    """The last token is a target only (never an input to a scored prediction): with
    its mask 0, changing it leaves the loss unchanged; with its mask 1 it does not."""
    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, seed=1, init_std=0.3)
    ids = _blocks(2, length=8, seed=3)
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 5) % VOCAB
    mask = torch.ones_like(ids)
    mask[:, -1] = 0
    with torch.no_grad():
        a, sa = lm_loss(model, {"input_ids": ids, "loss_mask": mask})
        b, sb = lm_loss(model, {"input_ids": other, "loss_mask": mask})
        assert torch.equal(a, b) and sa == sb
        c, _ = lm_loss(model, {"input_ids": ids, "loss_mask": torch.ones_like(ids)})
        d, _ = lm_loss(model, {"input_ids": other, "loss_mask": torch.ones_like(ids)})
        zero, stats = lm_loss(model, {"input_ids": ids, "loss_mask": torch.zeros_like(ids)})
    assert not torch.equal(c, d)
    assert float(zero) == 0.0 and stats["tokens"] == 0.0


def test_lm_loss_on_padded_batch_equals_examples_alone(tiny_llama):
    """Right padding with mask 0 changes nothing: the batch loss is the token-weighted
    mean of each example's loss computed alone."""
    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, seed=1, init_std=0.3)
    examples = [{"input_ids": torch.tensor([3, 9, 4, 17, 8]), "loss_mask": torch.tensor([0, 0, 1, 1, 1])},
                {"input_ids": torch.tensor([12, 5, 6]), "loss_mask": torch.tensor([0, 1, 1])}]
    batch = Batches(examples, pad_id=0).get([0, 1])
    with torch.no_grad():
        loss, stats = lm_loss(model, batch)
        alone = [lm_loss(model, {k: v[None] for k, v in e.items()}) for e in examples]
    total = sum(float(l) * s["tokens"] for l, s in alone)
    assert stats["tokens"] == 5.0
    assert float(loss) == pytest.approx(total / 5.0, rel=1e-5)
