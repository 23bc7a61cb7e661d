"""What the chapters call instead of defining it themselves: the setup cell
(:mod:`draftalign.book.notebook`), Chapter 4's gradient-variance harness and sub-vocabulary
ceilings (:mod:`draftalign.distill`), its timing helpers (:mod:`draftalign.timing`) and the
n-gram labels from the cached top-k (:mod:`draftalign.evaluate`). Chapter 1's
``simulate_tau`` and ``tvd_probs`` are tested with the other metrics (``test_metrics.py``).

Tiny inputs with known answers; models are the ``tiny_llama`` fixture's.
"""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
import torch
import transformers

from draftalign import timing
from draftalign.distill_measures import gradient_variance, logit_gradient, sub_vocab_ceilings
from draftalign.ngram import ngram_agreement, topk_labelled
from draftalign.losses import fkl, tvd, tvdpp
from draftalign.book.notebook import setup, versions_table
from draftalign.book.profiles import get_profile, OVERRIDES_ENV, overrides_from_env, runs_dir

V = 12


def _logits(seed: int, shape=(2, 3, V)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


# ------------------------------------------------------------------ setup


@pytest.fixture
def restored_state():
    """setup() changes process-wide settings: put them back after the test."""
    threads = torch.get_num_threads()
    precision = pd.get_option("display.precision")
    bars = transformers.utils.logging.is_progress_bar_enabled()
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        yield
    torch.set_num_threads(threads)
    pd.set_option("display.precision", precision)
    if bars:
        transformers.utils.logging.enable_progress_bar()
    torch.set_rng_state(rng)


def test_setup_seeds_and_applies_the_notebook_settings(restored_state, capsys):
    from tqdm import TqdmWarning

    threads = torch.get_num_threads()
    P = setup("ci")
    assert P == get_profile("ci")
    drawn = torch.rand(3)
    torch.manual_seed(P.seed)
    assert torch.equal(drawn, torch.rand(3)), "setup must seed torch with the profile's seed"
    assert pd.get_option("display.precision") == 3
    assert not transformers.utils.logging.is_progress_bar_enabled()
    assert any(f[0] == "ignore" and f[2] is TqdmWarning for f in warnings.filters)
    assert torch.get_num_threads() == threads, "threads only when asked for"
    shown = capsys.readouterr().out
    assert "torch" in shown and "transformers" in shown and "ci" in shown, "the versions table is shown"


def test_setup_threads_and_quiet(restored_state, capsys):
    P = setup("ci", threads=True, show=False)
    assert P.threads and torch.get_num_threads() == P.threads
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="unknown profile"):
        setup("no-such-profile", show=False)


def test_overrides_from_the_environment_make_a_custom_profile(restored_state, monkeypatch, tmp_path):
    """$DRAFTALIGN_PROFILE_OVERRIDES changes a chapter's profile; the changed profile has its
    own name, so its artifacts never land in the unchanged profile's runs folder."""
    monkeypatch.delenv(OVERRIDES_ENV, raising=False)
    assert overrides_from_env() == {} and setup("colab", show=False) == get_profile("colab")
    monkeypatch.setenv(OVERRIDES_ENV, '{"kd_steps": 3, "ch5_gammas": [1, 2]}')
    P = setup("colab", show=False)
    assert (P.name, P.kd_steps, P.ch5_gammas) == ("colab-custom", 3, (1, 2))
    assert P.kd_data == get_profile("colab").kd_data  # the rest is the colab profile's
    monkeypatch.setenv("DRAFTALIGN_RUNS", str(tmp_path))
    assert runs_dir(P) == tmp_path / "colab-custom" != runs_dir(get_profile("colab"))
    for text, message in [("{kd_steps: 3}", "not JSON"), ("[1, 2]", "JSON object"),
                          ('{"kd_stepz": 3}', "no profile field: kd_stepz"), ('{"name": "cpu"}', "name follows")]:
        monkeypatch.setenv(OVERRIDES_ENV, text)
        with pytest.raises(ValueError, match=message):
            setup("colab", show=False)


def test_versions_table_has_versions_and_the_profile():
    table = versions_table(get_profile("ci"))
    assert list(table.columns) == ["value"]
    assert {"python", "torch", "transformers", "draftalign", "git", "profile"} <= set(table.index)
    assert table.loc["profile", "value"] == "ci"
    assert table.loc["torch", "value"] == torch.__version__


# ------------------------------------------------------- gradient variance


def test_logit_gradient_is_the_closed_form():
    """FKL's gradient w.r.t. the draft's logits is ``q - p``; TVD's is
    ``(1/2) q (s - sum s q)`` with ``s = sign(q - p)`` (Chapter 4, eq. tvd-grad). Flattened."""
    d, t = _logits(0), _logits(1)
    q, p = d.softmax(-1), t.softmax(-1)
    g = logit_gradient(fkl, d, t)
    assert g.shape == (d.numel(),)
    assert torch.allclose(g, (q - p).flatten(), atol=1e-6)
    s = torch.sign(q - p)
    closed = 0.5 * q * (s - (s * q).sum(-1, keepdim=True))
    assert torch.allclose(logit_gradient(tvd, d, t), closed.flatten(), atol=1e-6)
    assert not d.requires_grad and d.grad is None, "the caller's logits are left alone"


def test_logit_gradient_seeds_only_losses_that_sample():
    """tvd takes no generator (it must still work); a sampled estimator repeats with its seed
    and changes with another."""
    d, t = _logits(2), _logits(3)
    labels = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(0))
    logit_gradient(tvd, d, t, labels=labels, seed=5)
    opts = {"estimator": "sampled", "normalize": "none"}
    a = logit_gradient(tvdpp, d, t, labels=labels, seed=1, **opts)
    assert torch.equal(a, logit_gradient(tvdpp, d, t, labels=labels, seed=1, **opts))
    assert not torch.equal(a, logit_gradient(tvdpp, d, t, labels=labels, seed=2, **opts))


def test_gradient_variance_exact_has_none_sampled_has_some():
    d, t = _logits(4), _logits(5)
    table = gradient_variance({"tvd": (tvd, {}), "tvd++ exact": (tvdpp, {}),
                               "sampled": (tvdpp, {"estimator": "sampled", "normalize": "none"})},
                              d, t, seeds=6)
    assert list(table.index) == ["tvd", "tvd++ exact", "sampled"]
    assert list(table.columns) == ["relative variance", "cosine of mean with TVD gradient"]
    assert table.loc["tvd", "relative variance"] < 1e-10
    assert table.loc["tvd++ exact", "relative variance"] < 1e-10
    assert table.loc["tvd", "cosine of mean with TVD gradient"] == pytest.approx(1.0, abs=1e-6)
    assert table.loc["sampled", "relative variance"] > 1e-3


def test_gradient_variance_evaluates_a_deterministic_estimator_twice_only():
    """Equal gradients for seeds 0 and 1: nothing is drawn, so the other seeds are skipped
    (same numbers as evaluating all of them); a sampled estimator is evaluated per seed."""
    d, t = _logits(6), _logits(7)
    calls = {"exact": 0, "sampled": 0}

    def counted(kind):
        def loss(z, tt, mask=None, **options):
            calls[kind] += 1
            return tvdpp(z, tt, mask, **options)
        return loss

    table = gradient_variance({"exact": (counted("exact"), {}),
                               "sampled": (counted("sampled"), {"estimator": "sampled", "normalize": "none"})},
                              d, t, seeds=6)
    assert calls == {"exact": 2, "sampled": 6}
    assert table.loc["exact", "relative variance"] == 0.0
    reference = gradient_variance({"exact": (tvdpp, {})}, d, t, seeds=1)
    assert table.loc["exact", "cosine of mean with TVD gradient"] == reference.loc["exact", "cosine of mean with TVD gradient"]


def test_gradient_variance_without_signal_is_nan():
    """Draft equal to the target: TVD's gradient is 0, so neither number is defined."""
    d = _logits(6)
    table = gradient_variance({"tvd": (tvd, {})}, d, d.clone(), seeds=2)
    assert math.isnan(table.loc["tvd", "relative variance"])
    assert math.isnan(table.loc["tvd", "cosine of mean with TVD gradient"])


# ------------------------------------------------------ sub-vocabulary ceilings


def _rows():
    return [{"prompt_ids": [1, 5, 6], "response_ids": [7, 8, 9, 10]},
            {"prompt_ids": [1, 4], "response_ids": [11, 5]},
            {"prompt_ids": [1, 9, 9, 8, 7], "response_ids": [6]}]


def test_sub_vocab_ceilings_by_hand(tiny_llama):
    """p(S) and 'top token in S' at every answer position equal an unpadded forward pass
    per row, whatever the batch size; keeping every token gives 1 and 1."""
    target = tiny_llama(vocab_size=V, seed=3, init_std=0.5, eos_token_id=None)
    keep = torch.tensor([0, 2, 5, 7, 11])
    expected_mass, expected_top = [], []
    with torch.no_grad():
        for r in _rows():
            n = len(r["prompt_ids"])
            probs = target(torch.tensor([r["prompt_ids"] + r["response_ids"]])).logits[0, n - 1:-1].softmax(-1)
            expected_mass.append(probs[:, keep].sum(-1))
            expected_top.append(torch.isin(probs.argmax(-1), keep).float())
    for batch_size in (1, 2, 8):
        mass, top_in = sub_vocab_ceilings(target, _rows(), keep, batch_size=batch_size)
        assert mass.shape == top_in.shape == (7,)  # 4 + 2 + 1 answer tokens
        assert torch.allclose(mass, torch.cat(expected_mass), atol=1e-5)
        assert torch.equal(top_in, torch.cat(expected_top))
    mass, top_in = sub_vocab_ceilings(target, _rows(), torch.arange(V))
    assert torch.allclose(mass, torch.ones(7)) and torch.equal(top_in, torch.ones(7))


def test_sub_vocab_ceilings_follow_max_length(tiny_llama):
    """Positions as in training: an answer cut by ``max_length`` counts only its kept tokens."""
    target = tiny_llama(vocab_size=V, seed=3, eos_token_id=None)
    mass, _ = sub_vocab_ceilings(target, _rows(), torch.tensor([1, 2]), max_length=5)
    assert mass.shape == (2 + 2,)  # row 0: 2 answer tokens kept; row 1: 2; row 2: none (dropped)


# ------------------------------------------------------------------ timing


class _Clock:
    """A fake ``time.perf_counter``: calls to ``tick`` advance it by the next duration."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, list(durations)

    def perf_counter(self):
        return self.now

    def tick(self):
        self.now += self.durations.pop(0)


def test_median_seconds_is_the_median_of_the_calls(monkeypatch):
    clock = _Clock([0.3, 0.1, 0.2, 5.0, 0.4])
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    assert timing.median_seconds(clock.tick, repeats=5) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="repeats"):
        timing.median_seconds(clock.tick, repeats=0)


def test_timed_loss_and_grad_starts_each_run_afresh(monkeypatch):
    """The value and gradient are one run's (not accumulated over repeats), the input is not
    touched, and the time is the median over runs."""
    clock = _Clock([0.5, 0.2, 0.9])
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    d, t = _logits(7), _logits(8)
    calls = []

    def loss(z):
        calls.append(z)
        clock.tick()
        return fkl(z, t)

    value, grad, seconds = timing.timed_loss_and_grad(loss, d, repeats=3)
    assert len(calls) == 3 and len({id(z) for z in calls}) == 3
    assert seconds == pytest.approx(0.5)
    assert torch.allclose(value, fkl(d, t)) and not value.requires_grad
    assert torch.allclose(grad, (d.softmax(-1) - t.softmax(-1)), atol=1e-6)
    assert not d.requires_grad and d.grad is None


# ------------------------------------------------------ n-gram labels from top-k


def test_topk_labelled_takes_the_most_likely_cached_token():
    topk = {3: (torch.tensor([[5, 7], [2, 9], [4, 1]]), torch.tensor([[-1.0, -0.5], [-0.1, -2.0], [-3.0, -0.2]]))}
    rows = [{"index": 3, "prompt_ids": [1, 2], "response_ids": [7, 2, 1, 6]}]
    out = topk_labelled(rows, topk)
    assert out == [{"prompt_ids": [1, 2], "response_ids": [7, 2, 1], "labels": [7, 2, 1]}]
    # bigram table: context (2,) is followed by 7, then by 1 (a tie: the first seen wins)
    assert ngram_agreement(out, out, n=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no cached top-k for row 4"):
        topk_labelled([{"index": 4, "prompt_ids": [1], "response_ids": [2]}], topk)


def test_one_colour_per_loss_everywhere():
    from draftalign.book.display import draft_color, DRAFT_COLORS, draft_colors

    losses = ["pretrained", "fkl", "rkl", "tvd", "tvd++"]
    assert len({draft_color(n) for n in losses}) == len(losses)
    assert draft_color("draft-tvd++") == draft_color("TVD++") == DRAFT_COLORS["tvd++"]
    got = draft_colors(["fkl", "mystery-a", "mystery-b", "tvd"])
    assert got["fkl"] == DRAFT_COLORS["fkl"] and got["tvd"] == DRAFT_COLORS["tvd"]
    assert got["mystery-a"] != got["mystery-b"]
    assert not {got["mystery-a"], got["mystery-b"]} & {DRAFT_COLORS[n] for n in losses}
