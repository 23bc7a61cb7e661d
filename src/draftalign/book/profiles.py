"""Profiles: every size, seed and model name of the book, in one place.

Reads no file; notebooks read ``PROFILE`` from their papermill ``parameters`` cell and
get it through :func:`profile_for_run` (in ``draftalign.notebook.setup``), which applies
``$DRAFTALIGN_PROFILE_OVERRIDES`` if set. The sizes of the same book:

- ``ci``: the real embedded target with tiny budgets (all chapters in minutes on 2 cores);
- ``cpu``: the main job (``make book``), results that show the effects on a laptop CPU;
- ``colab``: a free Colab T4 in about an hour: GPU-sized decoding and distillation, from
  the shipped pretrained draft and the shipped reference answers (no hub data needed);
- ``gpu``: an A100-class CUDA machine, larger budgets (hub corpora and prompts, pretraining
  from scratch: several hours on a T4, see the README);
- ``reference``: the full-scale run behind the shipped drafter (:mod:`draftalign.reference`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .. import DEFAULT_TARGET  # the embedded target (draftalign.models loads it)

__all__ = ["Profile", "PROFILES", "OVERRIDES_ENV", "REFERENCE_STAGES", "DRAFTER_NAME", "get_profile",
           "overrides_from_env", "parse_override", "profile_for_run", "repo_root", "runs_dir"]

# the reference run's stages, in order (draftalign.book.reference), and the folder it ships
REFERENCE_STAGES = ("corpus", "pretrain", "prompts", "answers", "kd", "finetune", "agreement", "tau", "bench",
                    "export")
DRAFTER_NAME = "smollm2-135m-instruct-drafter"

OVERRIDES_ENV = "DRAFTALIGN_PROFILE_OVERRIDES"  # JSON object of Profile fields, read by the notebooks


@dataclass(frozen=True)
class Profile:
    name: str
    target: str = DEFAULT_TARGET
    dtype: str | None = None  # None: fp32 on CPU, bf16 on CUDA
    seed: int = 0
    threads: int | None = None  # torch threads for timings (1 is far less noisy on 2 cores)
    # Chapter 1: speculative decoding from scratch
    ch1_prefix_len: int = 64  # context before the timed passes
    ch1_pass_ks: tuple[int, ...] = (1, 2, 4, 8, 16)  # new tokens per timed pass
    ch1_pass_repeats: int = 5
    ch1_rule_samples: int = 8_000  # draws of the accept/reject step on real p, q
    ch1_tau_sim_blocks: int = 20_000  # simulated blocks per (alpha, gamma)
    ch1_prompts: int = 4  # prompts for the bounds and the bf16 check
    ch1_max_new_tokens: int = 40
    ch1_gamma: int = 4
    ch1_rounds: int = 2  # interleaved timing rounds
    ch1_bf16_check: bool = True
    # The draft (Chapter 2 on): a Llama-architecture model with the target's vocabulary
    draft_hidden: int = 128
    draft_layers: int = 2
    draft_heads: int = 4
    draft_intermediate: int = 384
    # Chapter 2: pretraining
    pretrain_corpus: str = "stdlib"  # "stdlib" (offline, Python's own docs) or "web" (streamed)
    pretrain_texts: int | None = None  # None: all
    pretrain_block: int = 256
    pretrain_eval_blocks: int = 32
    pretrain_steps: int = 160
    pretrain_batch: int = 8
    pretrain_lr: float = 3e-3
    pretrain_warmup: int = 16
    # a shipped pretrained draft to start from instead of pretraining here (a folder under the
    # project, e.g. the reference drafter's pretraining stage); None: pretrain as above
    pretrained_from: str | None = None
    # evaluation of tau on the evaluation prompts (every chapter from 2 on)
    eval_per_category: int = 1
    eval_max_new_tokens: int = 48
    eval_gamma: int = 4
    # Chapter 3: distillation data
    distill_source: str = "builtin"  # "builtin" (data/prompts) or a hub dataset (gpu)
    distill_per_category: int = 12
    distill_max_new_tokens: int = 160
    distill_temperature: float = 0.7
    distill_top_p: float = 0.95
    distill_batch: int = 12
    self_instruct_n: int = 12
    distill_topk: int = 16  # keep the target's top-k per answer token (0: none)
    # Chapter 4: distillation with each loss
    kd_data: str = "data/distill/smollm2-135m-t0.7"  # a shipped set (see its provenance), or "generated"
    kd_target: str = "cached"  # "cached" (the data's top-k, fast) or "online" (exact target logits)
    kd_losses: tuple[str, ...] = ("fkl", "rkl", "tvd", "tvd++")
    kd_rows: int | None = None  # distil on this many answers of the set, drawn with the seed (None: all)
    kd_steps: int = 480
    kd_batch: int = 8
    kd_lr: float = 3e-3
    kd_warmup: int = 10
    kd_max_length: int = 320
    # None: the distilled draft keeps the target's vocabulary; k: its output layer covers only
    # the tokens of the training data (prompts, answers, the target's top-k at each answer
    # token): a third of the vocabulary on the book's data, and training steps about twice as fast
    kd_sub_vocab: int | None = 4
    kd_eval_per_category: int = 1
    kd_variance_seeds: int = 16  # gradient-variance measurement of the TVD++ estimators
    kd_seeds: tuple[int, ...] = (0,)  # training seeds per loss (data order); the first is the chapter's draft
    kd_held_out_share: float = 0.05  # prompts held out of the distillation set, by prompt, per category
    kd_autocast: str = "auto"  # training compute type (TrainConfig.autocast): "auto" is bf16/fp16 on a GPU, fp32 on a CPU
    kd_eval_every: int | None = None  # steps between points of the held-out curve (None: a third of the steps)
    # Chapter 4's verdict (draftalign.evaluate.acceptance_report): held-out prompts of the
    # distillation set (by prompt, per category) and MT-Bench first turns
    report_per_category: int = 1
    report_mt_bench_per_category: int = 1
    report_max_new_tokens: int = 48
    report_temperatures: tuple[float, ...] = (0.0, 0.7, 1.0)
    report_engine_prompts: int = 1  # prompts the engine decodes per draft and temperature (checks expected tau)
    # Chapter 5: analysis (reuses the drafts of Chapters 2 and 4 and data/drafts/; never trains)
    ch5_per_category: int = 2  # evaluation prompts per category: the target's greedy answers, replayed per draft
    ch5_mt_bench_per_category: int = 1  # MT-Bench first turns per category, the same way
    ch5_max_new_tokens: int = 48
    ch5_gammas: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)  # tau and MBSU from replays (no decoding)
    ch5_bench_gammas: tuple[int, ...] = (1, 2, 4, 8)  # timed by decoding, with the best draft
    ch5_bench_prompts: int = 2  # prompts per timing round (gamma and transformers comparisons)
    ch5_bench_rounds: int = 2
    ch5_prefix_len: int = 96  # context before the timed passes of the cost model
    ch5_pass_ks: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)  # new tokens per timed target pass
    ch5_pass_repeats: int = 3
    ch5_temperatures: tuple[float, ...] = (0.7, 1.0)  # sampled decoding, beside greedy
    ch5_temperature_prompts: int = 2
    ch5_temperature_max_new_tokens: int = 24  # per sampled answer (each costs a full decoding, unlike a replay)
    # The reference drafter (``make reference``, :mod:`draftalign.reference`)
    draft_init: str = "random"  # "random" or "target": embeddings projected from the target's
    ref_builtin_per_category: int | None = None  # built-in distillation prompts in the pool (None: all)
    ref_self_instruct: int = 0  # Magpie prompts written by the target
    ref_passages: int = 0  # passage tasks (summarise, rewrite, extract ...) over corpus passages
    ref_prompt_batch: int = 256  # candidates per self-instruct round
    ref_answer_batch: int = 256  # prompts per target.generate call
    ref_answer_max_new_tokens: int = 256
    ref_shard: int = 2048  # prompts per answer shard (a shard is final once the pool has grown past it)
    ref_sampled_temperature: float = 0.7  # the second answer per prompt (the first is greedy)
    ref_kd_shards: int | None = None  # answer shards (greedy + sampled) the loss comparison trains on (None: all)
    ref_finetune_steps: int = 0  # then: the best loss's draft trained on every answer (0: no such stage)
    ref_finetune_batch: int = 8
    ref_finetune_lr: float = 3e-4
    ref_finetune_max_length: int = 384
    ref_gammas: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    ref_bench_prompts: int = 16  # prompts per wall-clock round
    ref_bench_rounds: int = 3


PROFILES: dict[str, Profile] = {
    "ci": Profile(name="ci", threads=1, ch1_pass_ks=(1, 4, 8), ch1_pass_repeats=2,
                  ch1_rule_samples=2_000, ch1_tau_sim_blocks=2_000, ch1_prompts=2,
                  ch1_max_new_tokens=16, ch1_rounds=1,
                  draft_hidden=64, draft_layers=1, draft_heads=2, draft_intermediate=128,
                  pretrain_texts=200, pretrain_block=64, pretrain_eval_blocks=8, pretrain_steps=12,
                  pretrain_batch=4, pretrain_warmup=2, eval_per_category=1, eval_max_new_tokens=12,
                  distill_per_category=1, distill_max_new_tokens=24, distill_batch=9,
                  self_instruct_n=2, distill_topk=8, kd_data="generated", kd_target="online",
                  kd_steps=3, kd_batch=3, kd_warmup=1, kd_max_length=128, kd_eval_per_category=1,
                  kd_variance_seeds=4,
                  ch5_per_category=1, ch5_max_new_tokens=12, ch5_gammas=(1, 2, 4), ch5_bench_gammas=(1, 4),
                  ch5_bench_prompts=1, ch5_bench_rounds=1, ch5_prefix_len=32, ch5_pass_ks=(1, 3, 5),
                  ch5_pass_repeats=2, ch5_temperature_prompts=1, ch5_temperature_max_new_tokens=12,
                  report_max_new_tokens=16),
    # The cpu book starts from the reference drafter's pretraining stage (a GPU run on 56M
    # tokens of documentation; data/drafts/) instead of 15 minutes of CPU pretraining that
    # leaves tau near 1, and distils every loss from it with three training seeds: 100 steps
    # each in bf16 autocast (0.73 s a step on 2 cores against 1.17 s in fp32), about a
    # minute and a half per draft. 13% of the distillation prompts are held out (5 per
    # category), and the verdict reads 45 of them and 40 MT-Bench first turns.
    # Its Chapter 3 makes 8 answers per category (Chapter 4 distils on the shipped set made
    # the same way, larger): enough to show the data, with less for `make book` to do.
    "cpu": Profile(name="cpu", threads=1, pretrained_from="data/drafts/smollm2-135m-instruct-pretrained",
                   draft_hidden=192, draft_layers=6, draft_heads=3, draft_intermediate=768,
                   distill_per_category=8, kd_steps=100, kd_seeds=(0, 1, 2), kd_held_out_share=0.13,
                   kd_autocast="bf16", kd_eval_every=10,
                   report_per_category=5, report_mt_bench_per_category=5, report_max_new_tokens=64,
                   report_engine_prompts=2),
    "gpu": Profile(name="gpu", ch1_prefix_len=256, ch1_pass_ks=(1, 2, 4, 8, 16, 32, 64),
                   ch1_pass_repeats=20, ch1_rule_samples=20_000, ch1_tau_sim_blocks=100_000,
                   ch1_prompts=16, ch1_max_new_tokens=128, ch1_rounds=5,
                   draft_hidden=512, draft_layers=4, draft_heads=8, draft_intermediate=1408,
                   pretrain_corpus="web", pretrain_texts=80_000, pretrain_block=512,
                   pretrain_eval_blocks=256, pretrain_steps=4_000, pretrain_batch=32, pretrain_lr=1e-3,
                   pretrain_warmup=200, eval_per_category=8, eval_max_new_tokens=128,
                   distill_source="databricks/databricks-dolly-15k",
                   distill_per_category=1_000, distill_max_new_tokens=512, distill_batch=64,
                   self_instruct_n=200, distill_topk=0, kd_data="generated", kd_target="online", kd_sub_vocab=None,
                   kd_steps=3_000, kd_batch=16, kd_lr=5e-4, kd_warmup=100, kd_max_length=768,
                   kd_eval_per_category=8,
                   ch5_per_category=8, ch5_mt_bench_per_category=10, ch5_max_new_tokens=128,
                   ch5_bench_gammas=(1, 2, 3, 4, 5, 6, 7, 8), ch5_bench_prompts=8, ch5_bench_rounds=3,
                   ch5_prefix_len=256, ch5_pass_ks=(1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16), ch5_pass_repeats=20,
                   ch5_temperature_prompts=18, ch5_temperature_max_new_tokens=128),
}

# A free Colab runtime (T4, 15 GB, about an hour before it may disconnect): the chapters at
# GPU sizes without the two stages that do not fit an hour there. Chapter 2 starts from the
# shipped pretraining stage of the reference drafter (a GPU run on 56M tokens) instead of
# pretraining on streamed FineWeb-Edu; Chapter 4 distils each loss on the shipped reference
# answers (10,240 answers, 1.7M tokens, data/distill/smollm2-135m-reference/) with the
# target online instead of on Chapter 3's few hundred. Chapter 3 still makes its own data
# (builtin prompts and the target's Magpie prompts), to show how. Nothing reads the hub
# besides the target itself, which falls back to its offline copy.
PROFILES["colab"] = Profile(
    name="colab", ch1_prefix_len=256, ch1_pass_ks=(1, 2, 4, 8, 16, 32), ch1_pass_repeats=10,
    ch1_rule_samples=20_000, ch1_tau_sim_blocks=50_000, ch1_prompts=8, ch1_max_new_tokens=96, ch1_rounds=3,
    pretrained_from="data/drafts/smollm2-135m-instruct-pretrained",
    draft_hidden=192, draft_layers=6, draft_heads=3, draft_intermediate=768,
    eval_per_category=4, eval_max_new_tokens=128,
    distill_per_category=24, distill_max_new_tokens=256, distill_batch=64, self_instruct_n=64,
    distill_topk=16,
    kd_data="data/distill/smollm2-135m-reference", kd_target="online", kd_sub_vocab=None,
    kd_steps=250, kd_batch=16, kd_lr=1e-3, kd_warmup=20, kd_max_length=512, kd_eval_per_category=4,
    ch5_per_category=4, ch5_mt_bench_per_category=2, ch5_max_new_tokens=128,
    ch5_bench_gammas=(1, 2, 3, 4, 6, 8), ch5_bench_prompts=4, ch5_bench_rounds=3,
    ch5_prefix_len=256, ch5_pass_ks=(1, 2, 3, 4, 5, 6, 8, 12, 16), ch5_pass_repeats=10,
    ch5_temperature_prompts=8, ch5_temperature_max_new_tokens=96,
)


# The reference drafter: the paper's pipeline at full scale (GPU minutes or CPU hours,
# resumable), whose draft ships in data/drafts/. Sizes: a draft of at most 10% of the
# target's parameters (embeddings included); d = 192 with 6 layers (12.98M, 9.65%) costs
# 0.086 of a target step on a 2-core CPU. The step counts are those the shipped draft was
# made with (its GPU stages chose them from time budgets, see plan-*.json in its manifest),
# so `make reference` repeats that recipe. It answers every prompt of the pool (about 9M
# answer tokens); the shipped draft was trained on the part its GPU budget answered
# (greedy shards 0-2, sampled shards 0-1: data/distill/smollm2-135m-reference/).
PROFILES["reference"] = Profile(
    name="reference", ch1_max_new_tokens=128,
    draft_hidden=192, draft_layers=6, draft_heads=3, draft_intermediate=768, draft_init="target",
    pretrain_corpus="docs", pretrain_block=512, pretrain_eval_blocks=64, pretrain_steps=1_728,
    pretrain_batch=64, pretrain_lr=2e-3, pretrain_warmup=86,
    eval_per_category=8, eval_max_new_tokens=128, eval_gamma=4,
    distill_topk=0, ref_self_instruct=24_000, ref_passages=2_000, ref_prompt_batch=2048,
    ref_answer_batch=1024, ref_answer_max_new_tokens=256, ref_bench_prompts=16, ref_bench_rounds=3,
    ref_kd_shards=1, ref_finetune_steps=2_560,
    kd_data="reference", kd_target="online", kd_sub_vocab=None, kd_losses=("tvd++", "fkl"), kd_held_out_share=0.01,
    kd_steps=99, kd_batch=64, kd_lr=1e-3, kd_warmup=4, kd_max_length=512, kd_eval_per_category=8,
)


def get_profile(name: str, **overrides) -> Profile:
    """The profile called ``name`` (``ci``, ``cpu``, ``colab``, ``gpu`` or ``reference``), with
    optional overrides."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]


def overrides_from_env() -> dict:
    """The profile fields to change, from ``$DRAFTALIGN_PROFILE_OVERRIDES`` (a JSON object,
    e.g. ``{"kd_steps": 20, "ch5_gammas": [1, 2, 4]}``; lists become tuples); ``{}`` when
    unset. Raises ``ValueError`` naming the problem for text that is not such an object, an
    unknown field, or ``name``."""
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${OVERRIDES_ENV} is not JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"${OVERRIDES_ENV} must be a JSON object of profile fields, got {type(raw).__name__}")
    known = {f.name for f in fields(Profile)} - {"name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"${OVERRIDES_ENV} names no profile field: {', '.join(unknown)}"
                         + (" (the name follows from the profile)" if "name" in unknown else ""))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def parse_override(item: str, profile: str = "reference") -> dict:
    """``FIELD=VALUE`` (the command line's ``--set``) as ``{field: value}`` of the field's type
    in ``profile`` (tuples comma-separated, ``none`` for None). Raises ``ValueError`` naming
    the problem for an unknown field, ``name``, or a value of the wrong type."""
    key, sep, raw = item.partition("=")
    known = {f.name for f in fields(Profile)}
    if not sep or key not in known or key == "name":
        raise ValueError(f"{item!r}: want FIELD=VALUE with FIELD a profile field")
    default = getattr(get_profile(profile), key)
    if raw.lower() == "none":
        return {key: None}
    if default is None:
        for kind in (int, float):
            try:
                return {key: kind(raw)}
            except ValueError:
                pass
        return {key: raw}
    if isinstance(default, bool):
        return {key: raw.lower() in ("1", "true", "yes")}
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        return {key: tuple(kind(x) for x in raw.split(",") if x)}
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return {key: kind(raw)}
            except ValueError:
                raise ValueError(f"{item!r}: {key} takes a {kind.__name__}") from None
    return {key: raw}


def profile_for_run(name: str) -> Profile:
    """The profile a chapter runs with: ``name``, changed by :func:`overrides_from_env` if
    set. A changed profile is called ``<name>-custom``, so its artifacts go to their own
    ``runs/<name>-custom/`` and never replace the unchanged profile's."""
    overrides = overrides_from_env()
    P = get_profile(name, **overrides)
    return replace(P, name=f"{name}-custom") if overrides else P


def repo_root(start: Path | None = None) -> Path:
    """The project folder (holding ``pyproject.toml``), found upwards from ``start`` or the
    working directory, else the source tree this package was imported from (a notebook
    kernel restarted in another folder still finds ``data/``); the working directory itself
    when neither is the project (an installed package used elsewhere)."""
    here = (start or Path.cwd()).resolve()
    package = Path(__file__).resolve().parent  # src/draftalign in a source checkout
    for folder in (here, *here.parents, package.parent.parent):
        if (folder / "pyproject.toml").exists() and (folder / "src" / "draftalign").is_dir():
            return folder
    return here


def runs_dir(profile: Profile | str) -> Path:
    """``runs/<profile>/`` (or ``$DRAFTALIGN_RUNS/<profile>``): where chapters leave artifacts."""
    name = profile if isinstance(profile, str) else profile.name
    base = os.environ.get("DRAFTALIGN_RUNS")
    return (Path(base) if base else repo_root() / "runs") / name
