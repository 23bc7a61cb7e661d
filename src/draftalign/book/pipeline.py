"""The pipeline's stages as reusable artifacts, for every profile: the book's (``ci``,
``cpu``, ``colab``, ``gpu``) and the reference run's (``reference``, :mod:`draftalign.book.reference`).

Reads a profile (:mod:`draftalign.book.profiles`), the target and its tokenizer; writes, under
``runs/<profile>/``: ``corpus/`` (the pretraining token stream and prose passages),
``draft-pretrained/`` (a Hugging Face folder with the tokenizer, ``history.csv``, a model
card and ``manifest.json``), ``distill-data/`` (Chapter 3's answers), and
``draft-<loss>/`` per distillation (a standard folder over the target's vocabulary; the
form it trained in under ``_training/``). Every training stage goes through
:func:`draftalign.book.stages.train_stage`: reused when complete with the same spec,
resumed when interrupted, rebuilt when its settings differ, fitted to a time budget when
given one. Chapters 2-4 call these functions; so does every later chapter, which thereby
rebuilds whatever is missing.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch

from ..answers import generate_distillation_data, load_distillation_data, load_topk, read_distillation_rows
from ..artifacts import (clear_finished, is_complete, read_json, read_manifest, resume_or_restart, write_json,
                         write_manifest)
from ..corpus import pretraining_texts, texts_digest
from ..data import held_out_split, load_hub_prompts, load_prompts
from ..distill import answer_ce, distill_examples, kd_loss_fn
from ..drafts import init_from_target, load_draft_for, make_draft
from ..export import SUB_VOCAB_CARD_NOTE, export_draft, model_card
from ..models import count_parameters, target_id, target_identity
from ..packed import is_packed, read_packed_answers
from ..subvocab import SubVocabDraft, sub_vocab_draft, sub_vocabulary
from ..train import Batches, TrainConfig, history_of
from .profiles import Profile, repo_root, runs_dir
from .stages import planned_steps, probe_steps, train_stage

TRAINING_FORM = "_training"  # inside a distilled draft's folder: the form it was trained in (internal)

__all__ = ["TRAINING_FORM", "draft_spec", "make_profile_draft", "corpus", "pretrain_config", "pretrained_draft",
           "distill_prompts", "distillation_data", "answer_shard_rows", "kd_dataset", "kd_config", "kd_split",
           "distilled_draft", "finetuned_draft"]


def draft_spec(P: Profile) -> dict:
    return {"hidden_size": P.draft_hidden, "num_layers": P.draft_layers, "num_heads": P.draft_heads,
            "intermediate_size": P.draft_intermediate, "tie_embeddings": True, "seed": P.seed}


def make_profile_draft(target, P: Profile):
    """A fresh fp32 draft of the profile's shape for ``target``; with ``draft_init="target"``
    its embeddings start from the target's, projected (:func:`draftalign.drafts.init_from_target`)."""
    draft = make_draft(target, **draft_spec(P))
    if P.draft_init == "target":
        init_from_target(draft, target)
    elif P.draft_init != "random":
        raise ValueError(f"draft_init must be 'random' or 'target', got {P.draft_init!r}")
    return draft


# -- step 1: pretraining --------------------------------------------------------------------------------

def _prose(text: str) -> bool:
    """Whether a corpus text reads as prose (for passage prompts): 40 words or more, few
    symbols, none of reStructuredText's section rules or doctest prompts."""
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return (len(text.split()) >= 40 and letters >= 0.9 * len(text)
            and not any(mark in text for mark in ("---", ">>>", "``", "::", "==")))


def corpus(tokenizer, P: Profile) -> tuple[np.ndarray, list[str]]:
    """The profile's pretraining corpus, read once into ``runs/<profile>/corpus/``: its
    token ids ``[N]`` (the texts in order, EOS after each, as far as the profile's steps
    read: ``pretrain_steps x pretrain_batch`` blocks and the held-out ones; read further
    when a later profile asks for more) and prose passages (the reference run's passage
    prompts read them)."""
    folder = runs_dir(P) / "corpus"
    needed = (P.pretrain_steps * P.pretrain_batch + P.pretrain_eval_blocks) * P.pretrain_block
    spec = {"stage": "corpus", "corpus": P.pretrain_corpus, "texts": P.pretrain_texts, "vocab": len(tokenizer),
            "passages": P.ref_passages}
    done = read_manifest(folder) if is_complete(folder, spec) else None
    if done is None or not (done["results"]["complete"] or done["results"]["tokens"] >= needed):
        if done is not None:  # too short for this many steps: tokenized again, further
            shutil.rmtree(folder)
        clear_finished(folder)
        texts = pretraining_texts(P.pretrain_corpus, n_texts=P.pretrain_texts)
        parts, count = [], 0
        for start in range(0, len(texts), 2048):
            for row in tokenizer(texts[start:start + 2048], add_special_tokens=False)["input_ids"]:
                parts.append(np.asarray(row + [tokenizer.eos_token_id], dtype=np.int32))
                count += len(row) + 1
            if count >= needed:
                break
        complete = count < needed  # every text read
        folder.mkdir(parents=True, exist_ok=True)
        ids = np.concatenate(parts)[:needed] if parts else np.zeros(0, dtype=np.int32)
        np.savez_compressed(folder / "tokens.npz", tokens=ids)
        passages = [t[:1200] for t in texts if _prose(t)]
        random.Random(P.seed).shuffle(passages)
        write_json(folder / "passages.json", passages[: max(100, P.ref_passages)], indent=None)
        write_manifest(folder, spec, inputs={"texts": len(texts), "corpus_sha256": texts_digest(texts)},
                       results={"tokens": len(ids), "complete": complete})
    # the same tokens whatever an earlier, longer run cached: the held-out blocks stay put
    return np.load(folder / "tokens.npz")["tokens"][:needed], read_json(folder / "passages.json")


def pretrain_config(P: Profile):
    """``steps -> TrainConfig`` of the pretraining stage."""
    return lambda steps: TrainConfig.for_steps(steps, batch_size=P.pretrain_batch, lr=P.pretrain_lr,
                                               warmup=P.pretrain_warmup, evals=10, checkpoints=20, seed=P.seed)


def pretrained_draft(target, tokenizer, P: Profile, *, budget: float | None = None, progress: bool = True):
    """The draft pretrained on the profile's corpus: ``(draft, history, manifest)``.

    Reused from ``runs/<profile>/draft-pretrained/`` when complete with the same spec;
    otherwise trained (resuming from its checkpoint if one matches), in ``budget`` seconds
    if given (the manifest is then ``None`` until a later call finishes it). A profile with
    ``pretrained_from`` copies that shipped folder instead of training.
    """
    folder = runs_dir(P) / "draft-pretrained"
    if P.pretrained_from:
        return _shipped_pretrained(target, P, folder)
    tokens, _ = corpus(tokenizer, P)
    n = len(tokens) // P.pretrain_block
    if n <= P.pretrain_eval_blocks:
        raise ValueError(f"the corpus gives {n} blocks, not more than the {P.pretrain_eval_blocks} held out")
    blocks = torch.from_numpy(tokens[: n * P.pretrain_block].astype(np.int64)).view(n, P.pretrain_block)  # [N, L]
    # the last blocks (the end of the stream) are held out for evaluation
    eval_blocks, train_blocks = blocks[-P.pretrain_eval_blocks:], blocks[: -P.pretrain_eval_blocks]
    data = Batches({"input_ids": train_blocks}, seed=P.seed)
    config = pretrain_config(P)
    # margin 0.8: on a GPU machine, pretraining may share the machine with the answers stage
    steps = planned_steps(runs_dir(P), "pretrain", P.pretrain_steps, budget,
                          probe_steps(lambda: make_profile_draft(target, P), data, config, margin=0.8))
    spec = {"stage": "pretrain", "target": target_identity(target), "draft": draft_spec(P), "init": P.draft_init,
            "corpus": read_manifest(runs_dir(P) / "corpus")["spec"], "block": P.pretrain_block,
            "eval_blocks": P.pretrain_eval_blocks}

    def finish(draft, history):
        tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(model_card(
            title=f"Pretrained draft for {target_id(target)}", base_model=P.target,
            body=f"Pretrained by the `draftalign` book (profile `{P.name}`) on the `{P.pretrain_corpus}` corpus: "
                 f"{len(history)} steps of {P.pretrain_batch} x {P.pretrain_block} tokens. It shares the target's "
                 "tokenizer and vocabulary; it has not seen the target's answers yet (Chapter 4 distils it).\n\n"
                 + _target_line(target)),
            encoding="utf-8")
        last = history.iloc[-1]
        return ({"train_blocks": len(train_blocks), "eval_blocks": len(eval_blocks),
                 "train_tokens_seen": int(history.tokens.sum())},
                {"final_eval_loss": float(last.get("eval_loss", float("nan"))),
                 "final_eval_top1": float(last.get("eval_top1", float("nan"))),
                 "parameters": count_parameters(draft)})

    draft, history, manifest = train_stage(
        folder, spec, build=lambda: make_profile_draft(target, P), data=data, config=config, steps=steps,
        eval_data=Batches({"input_ids": eval_blocks}), budget=budget, progress=progress, desc="pretraining",
        finish=finish)
    if manifest is not None:  # finished (now or earlier): the stored form, in the target's dtype
        draft = load_draft_for(folder, target)
    return draft, history, manifest


def _target_line(target) -> str:
    """The model card's line saying which target weights a draft was made against."""
    ident = target_identity(target)
    detail = (f"hub revision {ident['revision']}" if ident["revision"] else
              f"weights sha256 {ident['weights_sha256'][:16]}..." if ident["weights_sha256"] else "")
    return f"Made against the target `{ident['id']}`" + (f" ({detail})." if detail else ".")


def _shipped_pretrained(target, P: Profile, folder: Path):
    """The pretrained draft copied from the shipped folder ``P.pretrained_from`` (never
    trained here): ``(draft, history, manifest)``; the copy is reused while the shipped
    weights are unchanged."""
    source = repo_root() / P.pretrained_from
    weights = source / "model.safetensors"
    for needed in ("model.safetensors", "config.json", "history.csv"):
        if not (source / needed).exists():
            raise FileNotFoundError(f"the profile starts from the shipped draft {source}, which holds no {needed} "
                                    "(a folder written by the reference pipeline's pretrain stage has all three)")
    spec = {"stage": "pretrain", "from": P.pretrained_from,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    if not is_complete(folder, spec):
        clear_finished(folder)  # a draft pretrained here, or another shipped one: kept aside
        if folder.exists():  # unfinished (no manifest): nothing to keep
            shutil.rmtree(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        (tmp / "manifest.json").unlink(missing_ok=True)
        tmp.rename(folder)
        shipped = read_manifest(source) or {}
        write_manifest(folder, spec, inputs={"shipped_spec": shipped.get("spec")},
                       results=shipped.get("results", {}))
    return load_draft_for(folder, target), history_of(folder), read_manifest(folder)


# -- step 2: distillation data ----------------------------------------------------------------------------

def distill_prompts(P: Profile) -> list[dict]:
    """The prompts the target answers for the profile: the built-in distillation set
    (``per_category`` of each category), or a hub dataset for the ``gpu`` profile; either
    without the prompts that share a run of 8 words with an evaluation or MT-Bench prompt
    (:func:`draftalign.prompt_pool.decontaminate`)."""
    from ..data import first_per_category
    from ..prompt_pool import decontaminate

    if P.distill_source == "builtin":
        return first_per_category(decontaminate(load_prompts("distill")), P.distill_per_category)
    return decontaminate(load_hub_prompts(P.distill_source, limit=P.distill_per_category * 9, seed=P.seed))


def distillation_data(target, tokenizer, P: Profile, *, progress: bool = True) -> datasets.Dataset:
    """The target's answers to :func:`distill_prompts`, from ``runs/<profile>/distill-data/``
    (reused when complete, resumed when interrupted, rebuilt when its settings differ)."""
    folder = runs_dir(P) / "distill-data"
    kwargs = dict(max_new_tokens=P.distill_max_new_tokens, temperature=P.distill_temperature,
                  top_p=P.distill_top_p, batch_size=P.distill_batch, seed=P.seed, topk=P.distill_topk)
    spec = {"stage": "distill-data", "target": target_identity(target),
            "source": P.distill_source, "per_category": P.distill_per_category, **kwargs}
    if is_complete(folder, spec):  # reused without the prompts' source (no hub needed)
        return load_distillation_data(folder)
    clear_finished(folder)
    prompts = distill_prompts(P)
    texts, cats = [p["prompt"] for p in prompts], [p["category"] for p in prompts]
    had = set(load_distillation_data(folder)["index"]) if (folder / "records.jsonl").exists() else set()
    start = time.perf_counter()
    ds = resume_or_restart(lambda: generate_distillation_data(target, tokenizer, texts, folder, categories=cats,
                                                               progress=progress, **kwargs))
    seconds = time.perf_counter() - start
    lengths = pd.Series([len(r) for r in ds["response_ids"]])
    new = sum(len(r["response_ids"]) for r in ds if r["index"] not in had)
    write_manifest(folder, spec, inputs={"prompts": len(prompts)},
                   results={"rows": len(ds), "response_tokens": int(lengths.sum()),
                            "finished": int(sum(f == "stop" for f in ds["finish_reason"])),
                            "generation_seconds": seconds, "generated_tokens_per_s": new / seconds,
                            "resumed_rows": len(had)})
    return ds


def answer_shard_rows(P: Profile, *, shards: int | None = None) -> list[dict]:
    """The answers the reference run's ``answers`` stage wrote in ``runs/<profile>/answers-<kind>/shard-*``
    (finished or not), greedy then sampled, each with ``kind``, ``shard`` and a row ``index``;
    with ``shards``, the first ``shards`` shards only."""
    rows = []
    for kind in ("greedy", "sampled"):
        for folder in sorted((runs_dir(P) / f"answers-{kind}").glob("shard-*")):
            shard = int(folder.name.split("-")[1])
            if (folder / "records.jsonl").exists() and (shards is None or shard < shards):
                rows += [{**r, "kind": kind, "shard": shard} for r in read_distillation_rows(folder)]
    return [{**r, "index": i} for i, r in enumerate(rows)]


def kd_dataset(target, tokenizer, P: Profile, *, all_shards: bool = False, progress: bool = True):
    """The data a profile distils on, and its folder: the shipped set named by ``P.kd_data``
    (made by ``draftalign generate``, see its provenance.json; or a packed answer set such as
    the reference drafter's, :mod:`draftalign.packed`), the profile's own distillation data
    from Chapter 3 (``"generated"``), or the reference run's answer shards (``"reference"``:
    the first ``ref_kd_shards``, every shard with ``all_shards``). With ``P.kd_rows``, that
    many of its rows, drawn with ``P.seed`` (the same rows every run)."""
    if P.kd_rows is not None and P.kd_rows < 1:
        raise ValueError(f"kd_rows must be a positive number of answers or None, got {P.kd_rows}")
    if P.kd_data == "generated":
        distillation_data(target, tokenizer, P, progress=progress)
        folder = runs_dir(P) / "distill-data"
        data = load_distillation_data(folder)
    elif P.kd_data == "reference":
        folder = runs_dir(P)
        rows = answer_shard_rows(P, shards=None if all_shards else P.ref_kd_shards)
        if not rows:
            raise FileNotFoundError(f"no answers in {folder}: run the reference run's answers stage first")
        data = datasets.Dataset.from_list(rows)
    else:
        folder = repo_root() / P.kd_data
        if is_packed(folder):
            data = _packed_dataset(folder, tokenizer)
        elif (folder / "records.jsonl").exists():
            data = load_distillation_data(folder)
        else:
            raise FileNotFoundError(f"{folder} holds no distillation set; build it with the command in "
                                    f"its provenance.json, or set kd_data='generated'")
    if P.kd_rows is not None and P.kd_rows < len(data):
        data = data.shuffle(seed=P.seed).select(range(P.kd_rows))
    return data, folder


_PACKED: dict[tuple, datasets.Dataset] = {}  # a chapter distils each loss on the same packed set


def _packed_dataset(folder: Path, tokenizer) -> datasets.Dataset:
    """A packed answer set as a Dataset, read (templated and decoded: seconds) once per
    process for the same files and tokenizer."""
    files = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(folder.iterdir()) if f.is_file())
    key = (str(folder.resolve()), files, tokenizer.name_or_path, len(tokenizer))
    if key not in _PACKED:
        _PACKED.clear()  # one set at a time: a few hundred MB at most
        _PACKED[key] = datasets.Dataset.from_list(read_packed_answers(folder, tokenizer))
    return _PACKED[key]


# -- step 3: distillation --------------------------------------------------------------------------------

def kd_split(data, P: Profile):
    """``(train, held_out)``: the profile's split of its distillation set (by prompt)."""
    return held_out_split(data, share=P.kd_held_out_share)


def kd_config(P: Profile, seed: int | None = None):
    """``steps -> TrainConfig`` of a distillation stage (``seed``: the training seed, the data order)."""
    def config(steps):
        evals = max(1, steps // P.kd_eval_every) if P.kd_eval_every else 3
        return TrainConfig.for_steps(steps, batch_size=P.kd_batch, lr=P.kd_lr, warmup=P.kd_warmup, evals=evals,
                                     checkpoints=4, eval_batches=2 if P.kd_eval_every is None else 4,
                                     seed=P.seed if seed is None else seed, autocast=P.kd_autocast)
    return config


def _fine_tune(target, tokenizer, P: Profile, *, folder: Path, spec: dict, base_folder: Path, data, loss: str,
               config, seed: int, steps: int, sub_vocab: int | None, topk: dict | None, plan: str,
               budget: float | None, loss_options: dict | None, card: str, progress: bool):
    """The one fine-tuning stage behind :func:`distilled_draft` and :func:`finetuned_draft`:
    the draft in ``base_folder`` trained with ``loss`` (a KD loss, or ``"ce"``: cross-entropy
    on the answer tokens) on the training split of ``data``, in ``folder/_training``, then
    exported to ``folder`` as a standard folder over the target's vocabulary."""
    train_rows, eval_rows = kd_split(data, P)
    loss_fn = answer_ce if loss == "ce" else kd_loss_fn(target, loss, **(loss_options or {}))
    max_length = P.ref_finetune_max_length if loss == "ce" else P.kd_max_length
    examples = Batches(distill_examples(train_rows, max_length=max_length, topk=topk),
                       pad_id=tokenizer.pad_token_id, seed=seed)
    cached_eval = topk if P.kd_eval_every is not None else None  # the held-out curve against the cached target
    held = [r for r in eval_rows if len(r["prompt_ids"]) < max_length]  # rows with an answer left after the cut
    eval_data = Batches(distill_examples(held, max_length=max_length, topk=cached_eval),
                        pad_id=tokenizer.pad_token_id) if held else None
    for p in target.parameters():
        p.requires_grad_(False)

    def build():
        draft = load_draft_for(base_folder, target, dtype=torch.float32)  # fp32 master weights
        if sub_vocab is not None:  # the output layer over the tokens of the training data only
            keep = sub_vocabulary(train_rows, topk=topk, per_position=sub_vocab, always=tokenizer.all_special_ids)
            draft = sub_vocab_draft(draft, keep)
        return draft

    steps = planned_steps(runs_dir(P), plan, steps, budget, probe_steps(build, examples, config, loss_fn))

    def finish(draft, history):
        last = history.iloc[-1]
        record = {"inputs": {"train_rows": len(train_rows), "eval_rows": len(eval_rows),
                             "answer_tokens_seen": int(history.tokens.sum()),
                             "train_answer_tokens": int(sum(len(r) for r in train_rows["response_ids"]))},
                  "results": {"final_eval_tvd": float(last.get("eval_tvd", float("nan"))),
                              "final_eval_top1": float(last.get("eval_top1", float("nan"))),
                              "train_seconds": float(history.seconds.sum())}}
        body = card.format(**record["inputs"], **record["results"], steps=len(history)) + "\n\n" + _target_line(target)
        if isinstance(draft, SubVocabDraft):
            body += (f"\n\n{SUB_VOCAB_CARD_NOTE}\n\nThe training form (the sub-vocabulary model and its map) is in "
                     f"`{TRAINING_FORM}/`: `draftalign.drafts.load_draft` loads it.")
        export_draft(draft, folder, tokenizer=tokenizer, manifest={"spec": spec, **record},
                     card=model_card(title=f"Draft for {target_id(target)}, " + (
                         "fine-tuned on every answer" if loss == "ce" else f"distilled with {loss}"), base_model=P.target,
                                     datasets=(str(P.kd_data),), body=body))
        history.to_csv(folder / "history.csv", index=False)
        return record["inputs"], record["results"]

    draft, history, manifest = train_stage(
        folder, spec, build=build, data=examples, config=config, steps=steps, loss_fn=loss_fn, eval_data=eval_data,
        budget=budget, progress=progress, desc=f"distilling ({loss})", train_dir=folder / TRAINING_FORM,
        finish=finish)
    if manifest is not None:
        draft = load_draft_for(folder / TRAINING_FORM, target)
    return draft, history, manifest


def distilled_draft(target, tokenizer, P: Profile, loss: str, *, loss_options: dict | None = None,
                    name: str | None = None, seed: int | None = None, budget: float | None = None,
                    progress: bool = True):
    """The pretrained draft fine-tuned with ``loss`` on :func:`kd_dataset`:
    ``(draft, history, manifest)``, from ``runs/<profile>/draft-<name or loss>/`` (reused
    when complete with the same spec; resumed from its checkpoint when interrupted).
    ``seed``: the training seed (the data order), the profile's by default; a draft
    trained with another seed lives in ``draft-<name or loss>-s<seed>/``. ``budget``: fit
    the steps to that many seconds (planned once for every loss, ``plan-kd.json``)."""
    _, _, base_manifest = pretrained_draft(target, tokenizer, P, progress=progress)
    if base_manifest is None:
        raise RuntimeError("the pretrained draft is not finished; run its stage first")
    data, data_folder = kd_dataset(target, tokenizer, P, progress=progress)
    seed = P.seed if seed is None else int(seed)
    folder = runs_dir(P) / (f"draft-{name or loss}" + ("" if seed == P.seed else f"-s{seed}"))
    spec = {"stage": "distill", "target": target_identity(target), "loss": loss, "loss_options": loss_options or {},
            "base": base_manifest["spec"],
            "data": str(P.kd_data), "data_rows": len(data), "target_logits": P.kd_target,
            "max_length": P.kd_max_length, "sub_vocab": P.kd_sub_vocab, "held_out_share": P.kd_held_out_share}
    if P.kd_rows is not None:  # a sample of the set (absent otherwise: earlier specs stay valid)
        spec["data_sample"] = {"rows": P.kd_rows, "seed": P.seed}
    topk = load_topk(data_folder) if P.kd_target == "cached" else None
    if P.kd_target == "cached" and not topk:
        raise ValueError(f"{data_folder} has no cached top-k; set kd_target='online'")
    card = (f"Trained by the `draftalign` book (profile `{P.name}`): the pretrained draft fine-tuned with the "
            f"`{loss}` loss on the target's answers in `{P.kd_data}` ({{train_rows}} answers for training, "
            f"{{eval_rows}} held out).\n\n- steps: {{steps}} of {P.kd_batch} answers ({{answer_tokens_seen:,}} "
            "answer tokens seen, {train_seconds:.0f} s of training steps)\n- target distributions: "
            + ("the cached top-k of the data" if topk else "online") + "\n- held-out agreement (top-1 with the "
            "target): {final_eval_top1:.3f}; held-out TVD: {final_eval_tvd:.3f}\n\nAcceptance at each temperature "
            "is measured in Chapter 4 of the book (`book/notebooks/04_tvdpp.ipynb` of a book run).")
    return _fine_tune(target, tokenizer, P, folder=folder, spec=spec, base_folder=runs_dir(P) / "draft-pretrained",
                      data=data, loss=loss, config=kd_config(P, seed), seed=seed, steps=P.kd_steps, sub_vocab=P.kd_sub_vocab,
                      topk=topk, plan="kd", budget=budget, loss_options=loss_options, card=card, progress=progress)


def finetuned_draft(target, tokenizer, P: Profile, base: str, *, budget: float | None = None, progress: bool = True):
    """The distilled draft ``draft-<base>`` trained further on every answer of the profile's
    set with cross-entropy on the target's tokens: sequence-level KD (Kim and Rush 2016),
    whose gradient is FKL's on sampled answers and pushes the draft's argmax onto the
    target's on greedy ones. ``(draft, history, manifest)`` from ``runs/<profile>/draft-finetuned/``."""
    if P.ref_finetune_steps < 1:
        raise ValueError("the profile has ref_finetune_steps = 0: no finetune stage")
    base_folder = runs_dir(P) / f"draft-{base}"
    base_manifest = read_manifest(base_folder)
    if base_manifest is None:
        raise RuntimeError(f"{base_folder} is not finished; run the kd stage first")
    data, _ = kd_dataset(target, tokenizer, P, all_shards=True, progress=progress)
    spec = {"stage": "finetune", "target": target_identity(target), "base": base_manifest["spec"], "base_name": base, "data_rows": len(data),
            "max_length": P.ref_finetune_max_length, "loss": "answer cross-entropy"}

    def config(steps):
        return TrainConfig.for_steps(steps, batch_size=P.ref_finetune_batch, lr=P.ref_finetune_lr, warmup=20,
                                     evals=8, checkpoints=max(10, steps // 100), eval_batches=4, seed=P.seed)

    card = (f"The `{base}` draft of the `draftalign` reference run trained further on every answer "
            "({train_rows} answers; {steps} steps, {answer_tokens_seen:,} answer tokens seen) with cross-entropy "
            "on the target's tokens. Held-out agreement (top-1 with the target): {final_eval_top1:.3f}.")
    return _fine_tune(target, tokenizer, P, folder=runs_dir(P) / "draft-finetuned", spec=spec, base_folder=base_folder,
                      data=data, loss="ce", config=config, seed=P.seed, steps=P.ref_finetune_steps, sub_vocab=None, topk=None,
                      plan="finetune", budget=budget, loss_options=None, card=card, progress=progress)
