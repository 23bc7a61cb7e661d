"""The pipeline's stages as reusable artifacts: pretrained draft, distillation data.

Reads a profile (:mod:`draftalign.profiles`), the target and its tokenizer; writes
``runs/<profile>/draft-pretrained/`` (a Hugging Face model folder with the tokenizer,
``history.csv`` and ``manifest.json``) and ``runs/<profile>/distill-data/``
(``records.jsonl``, ``settings.json``, ``manifest.json``). Each function reuses a complete
artifact built with the same spec, resumes an interrupted one, and rebuilds one built
with other settings. Chapters 2 and 3 call them; so does every later chapter, which
thereby rebuilds whatever is missing.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import datasets
import pandas as pd
import torch

from .artifacts import clear_finished, is_complete, read_manifest, resume_or_restart, write_manifest
from .corpus import pack_blocks, pretraining_texts, texts_digest
from .data import load_hub_prompts, load_prompts
from .distill import distill
from .export import export_draft, model_card
from .generate import generate_distillation_data, load_distillation_data, load_topk
from .packed import is_packed, read_packed_answers
from .models import count_parameters, make_draft, target_id, vocab_size
from .profiles import Profile, repo_root, runs_dir
from .subvocab import load_draft, sub_vocab_draft, sub_vocabulary
from .train import Batches, TrainConfig, history_of, train

TRAINING_FORM = "_training"  # inside a distilled draft's folder: the form it was trained in (internal)

__all__ = ["TRAINING_FORM", "held_out_split", "draft_spec", "make_profile_draft", "pretrain_config", "pretrained_draft",
           "distill_prompts", "distillation_data", "kd_dataset", "kd_config", "kd_split", "distilled_draft",
           "report_prompts", "report_answers"]


def draft_spec(P: Profile) -> dict:
    return {"hidden_size": P.draft_hidden, "num_layers": P.draft_layers, "num_heads": P.draft_heads,
            "intermediate_size": P.draft_intermediate, "tie_embeddings": True, "seed": P.seed}


def make_profile_draft(target, P: Profile):
    """A fresh draft of the profile's shape for ``target``."""
    return make_draft(target, **draft_spec(P))


def pretrain_config(P: Profile) -> TrainConfig:
    return TrainConfig(max_steps=P.pretrain_steps, batch_size=P.pretrain_batch, lr=P.pretrain_lr,
                       warmup_steps=P.pretrain_warmup, eval_every=max(1, P.pretrain_steps // 8),
                       checkpoint_every=max(1, P.pretrain_steps // 8), seed=P.seed)


def _load_draft(folder, target):
    param = next(target.parameters())
    return load_draft(folder, dtype=param.dtype, device=param.device, vocab_size=vocab_size(target)).eval()


def pretrained_draft(target, tokenizer, P: Profile, *, progress: bool = True):
    """The draft pretrained on the profile's corpus: ``(draft, history, manifest)``.

    Reused from ``runs/<profile>/draft-pretrained/`` when complete with the same spec;
    otherwise trained (resuming from its checkpoint if one matches).
    """
    folder = runs_dir(P) / "draft-pretrained"
    if P.pretrained_from:
        return _shipped_pretrained(target, P, folder)
    cfg = pretrain_config(P)
    spec = {"stage": "pretrain", "target": target_id(target),
            "draft": draft_spec(P), "corpus": P.pretrain_corpus, "texts": P.pretrain_texts,
            "block": P.pretrain_block, "eval_blocks": P.pretrain_eval_blocks, "train": asdict(cfg)}
    if is_complete(folder, spec):
        return _load_draft(folder, target), history_of(folder), read_manifest(folder)
    texts = pretraining_texts(P.pretrain_corpus, n_texts=P.pretrain_texts)
    # tokenised only as far as training reads: every step's blocks once, plus the held-out ones
    needed = P.pretrain_steps * P.pretrain_batch + P.pretrain_eval_blocks
    blocks = pack_blocks(tokenizer, texts, P.pretrain_block, max_blocks=needed)  # [N, L]
    if len(blocks) <= P.pretrain_eval_blocks:
        raise ValueError(f"the corpus gives {len(blocks)} blocks, not more than the "
                         f"{P.pretrain_eval_blocks} held out for evaluation")
    # hold out the last blocks (the end of the stream) for evaluation
    eval_blocks, train_blocks = blocks[-P.pretrain_eval_blocks:], blocks[: -P.pretrain_eval_blocks]
    clear_finished(folder)

    def run():
        draft = make_profile_draft(target, P)
        history = train(draft, Batches({"input_ids": train_blocks}, seed=P.seed), cfg, folder,
                        eval_data=Batches({"input_ids": eval_blocks}), progress=progress, desc="pretraining")
        return draft, history

    draft, history = resume_or_restart(run)
    tokenizer.save_pretrained(folder)
    last = history.iloc[-1]
    (folder / "README.md").write_text(model_card(
        title=f"Pretrained draft for {target_id(target)}", base_model=P.target,
        body=f"Pretrained by the `draftalign` book (profile `{P.name}`, Chapter 2) on the `{P.pretrain_corpus}` "
             f"corpus: {P.pretrain_steps} steps of {P.pretrain_batch} x {P.pretrain_block} tokens. It shares the "
             f"target's tokenizer and vocabulary; it has not seen the target's answers yet (Chapter 4 distils it)."),
        encoding="utf-8")
    manifest = write_manifest(folder, spec, inputs={
        "corpus_sha256": texts_digest(texts), "texts": len(texts), "train_blocks": len(train_blocks),
        "eval_blocks": len(eval_blocks), "train_tokens_seen": int(history.tokens.sum())},
        results={"final_eval_loss": float(last.get("eval_loss", float("nan"))),
                 "final_eval_top1": float(last.get("eval_top1", float("nan"))),
                 "parameters": count_parameters(draft), "train_seconds": float(history.seconds.sum())})
    return draft, history, manifest


def _shipped_pretrained(target, P: Profile, folder):
    """The pretrained draft copied from the shipped folder ``P.pretrained_from`` (never
    trained here): ``(draft, history, manifest)``; the copy is reused while the shipped
    weights are unchanged."""
    import hashlib

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
    return _load_draft(folder, target), history_of(folder), read_manifest(folder)


def distill_prompts(P: Profile) -> list[dict]:
    """The prompts the target answers for the profile: the built-in distillation set
    (``per_category`` of each category), or a hub dataset for the ``gpu`` profile."""
    if P.distill_source == "builtin":
        return load_prompts("distill", limit_per_category=P.distill_per_category)
    return load_hub_prompts(P.distill_source, limit=P.distill_per_category * 9, seed=P.seed)


def distillation_data(target, tokenizer, P: Profile, *, progress: bool = True) -> datasets.Dataset:
    """The target's answers to :func:`distill_prompts`, from ``runs/<profile>/distill-data/``
    (reused when complete, resumed when interrupted, rebuilt when its settings differ)."""
    folder = runs_dir(P) / "distill-data"
    kwargs = dict(max_new_tokens=P.distill_max_new_tokens, temperature=P.distill_temperature,
                  top_p=P.distill_top_p, batch_size=P.distill_batch, seed=P.seed, topk=P.distill_topk)
    spec = {"stage": "distill-data", "target": target_id(target),
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


def kd_dataset(target, tokenizer, P: Profile, *, progress: bool = True):
    """The data Chapter 4 distils on, and its folder: the shipped set named by
    ``P.kd_data`` (made by ``python -m draftalign.generate``, see its provenance.json; or a
    packed answer set such as the reference drafter's, :mod:`draftalign.packed`), or the
    profile's own distillation data from Chapter 3 (``"generated"``). With ``P.kd_rows``,
    that many of its rows, drawn with ``P.seed`` (the same rows every run)."""
    if P.kd_rows is not None and P.kd_rows < 1:
        raise ValueError(f"kd_rows must be a positive number of answers or None, got {P.kd_rows}")
    if P.kd_data == "generated":
        distillation_data(target, tokenizer, P, progress=progress)
        folder = runs_dir(P) / "distill-data"
        data = load_distillation_data(folder)
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


def held_out_split(data, *, share: float = 0.05):
    """``(train, held_out)`` rows of a distillation dataset, held out *by prompt*: every
    answer to a held-out prompt is held out (a second sample of a prompt seen in training
    would leak it), and each category gives the same share of its distinct prompts, at
    least one (none from a category with a single prompt; one prompt overall when every
    category has one), chosen by a hash of the prompt text (stable across runs). The
    one split of the book: the distilled drafts' held-out metrics and every held-out
    number of Chapter 4 use it."""
    import hashlib
    from collections import defaultdict

    by_category = defaultdict(set)
    for row in data:
        by_category[row.get("category")].add(row["prompt"])
    def ranked(prompts):
        return sorted(prompts, key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())

    held = set()
    for prompts in by_category.values():  # a category with one prompt keeps it for training
        n = len(prompts)
        held.update(ranked(prompts)[: min(n - 1, max(1, round(share * n)))])
    everything = {row["prompt"] for row in data}
    if not held:  # tiny sets (one prompt per category): one prompt overall
        if len(everything) < 2:
            raise ValueError("too few prompts to hold any out: a split needs at least two")
        held = set(ranked(everything)[:1])
    train_idx = [i for i, row in enumerate(data) if row["prompt"] not in held]
    held_idx = [i for i, row in enumerate(data) if row["prompt"] in held]
    pick = (lambda idx: data.select(idx)) if hasattr(data, "select") else (lambda idx: [data[i] for i in idx])
    return pick(train_idx), pick(held_idx)


def kd_config(P: Profile, seed: int | None = None) -> TrainConfig:
    every = P.kd_eval_every or (P.kd_steps if P.kd_steps < 12 else P.kd_steps // 3)
    return TrainConfig(max_steps=P.kd_steps, batch_size=P.kd_batch, lr=P.kd_lr, warmup_steps=P.kd_warmup,
                       eval_every=every, eval_batches=2 if P.kd_eval_every is None else 4,
                       checkpoint_every=max(1, P.kd_steps // 4), seed=P.seed if seed is None else seed,
                       autocast=P.kd_autocast)


def kd_split(data, P: Profile):
    """``(train, held_out)``: the profile's split of its distillation set (by prompt)."""
    return held_out_split(data, share=P.kd_held_out_share)


def distilled_draft(target, tokenizer, P: Profile, loss: str, *, loss_options: dict | None = None,
                    name: str | None = None, seed: int | None = None, progress: bool = True):
    """The pretrained draft fine-tuned with ``loss`` on :func:`kd_dataset`:
    ``(draft, history, manifest)``, from ``runs/<profile>/draft-<name or loss>/`` (reused
    when complete with the same spec; resumed from its checkpoint when interrupted).
    ``seed``: the training seed (the data order), the profile's by default; a draft
    trained with another seed lives in ``draft-<name or loss>-s<seed>/``."""
    base, _, base_manifest = pretrained_draft(target, tokenizer, P, progress=progress)
    data, data_folder = kd_dataset(target, tokenizer, P, progress=progress)
    seed = P.seed if seed is None else int(seed)
    folder = runs_dir(P) / (f"draft-{name or loss}" + ("" if seed == P.seed else f"-s{seed}"))
    cfg = kd_config(P, seed)
    spec = {"stage": "distill", "loss": loss, "loss_options": loss_options or {},
            "base": base_manifest["spec"], "data": str(P.kd_data), "data_rows": len(data),
            "target_logits": P.kd_target, "max_length": P.kd_max_length, "sub_vocab": P.kd_sub_vocab,
            "train": asdict(cfg)}
    if P.kd_rows is not None:  # a sample of the set (absent otherwise: earlier specs stay valid)
        spec["data_sample"] = {"rows": P.kd_rows, "seed": P.seed}
    internal = folder / TRAINING_FORM
    if is_complete(folder, spec):
        return _load_draft(internal, target), history_of(internal), read_manifest(folder)
    clear_finished(folder)
    topk = load_topk(data_folder) if P.kd_target == "cached" else None
    if P.kd_target == "cached" and not topk:
        raise ValueError(f"{data_folder} has no cached top-k; set kd_target='online'")
    train_rows, eval_rows = kd_split(data, P)

    def run():
        param = next(target.parameters())  # trained in fp32 (master weights) whatever the target's dtype
        draft = load_draft(runs_dir(P) / "draft-pretrained", dtype=torch.float32, device=param.device,
                           vocab_size=vocab_size(target))
        if P.kd_sub_vocab is not None:  # the output layer over the tokens of the training data only
            keep = sub_vocabulary(train_rows, topk=topk, per_position=P.kd_sub_vocab,
                                  always=tokenizer.all_special_ids)
            draft = sub_vocab_draft(draft, keep)
        # the held-out curve against the cached target when there is one: many points, no target pass
        curve = eval_rows if P.kd_eval_every is None or topk is None else \
            eval_rows.shuffle(seed=0).select(range(min(len(eval_rows), 4 * P.kd_batch)))
        history = distill(draft, target, train_rows, internal, loss=loss, cfg=cfg, max_length=P.kd_max_length,
                          eval_dataset=curve, loss_options=loss_options, pad_id=tokenizer.pad_token_id,
                          topk=topk, eval_topk=topk if P.kd_eval_every is not None else None, progress=progress)
        return draft, history

    draft, history = resume_or_restart(run)
    last = history.iloc[-1]
    record = {"spec": spec, "inputs": {"train_rows": len(train_rows), "eval_rows": len(eval_rows),
                                       "answer_tokens_seen": int(history.tokens.sum())},
              "results": {"final_eval_tvd": float(last.get("eval_tvd", float("nan"))),
                          "final_eval_top1": float(last.get("eval_top1", float("nan"))),
                          "train_seconds": float(history.seconds.sum())}}
    # what users load: a standard folder over the target's vocabulary (the training form stays inside)
    card = model_card(title=f"Draft for {target_id(target)}, distilled with {loss}", base_model=P.target,
                      datasets=(P.kd_data,), body=_card_body(P, loss, record, draft))
    export_draft(draft, folder, tokenizer=tokenizer, card=card, manifest=record)
    history.to_csv(folder / "history.csv", index=False)
    return draft, history, read_manifest(folder)


def _card_body(P: Profile, loss: str, record: dict, draft) -> str:
    """The model card of a distilled draft of the book's pipeline."""
    from .export import SUB_VOCAB_CARD_NOTE
    from .subvocab import SubVocabDraft

    r, i = record["results"], record["inputs"]
    lines = [
        f"Trained by the `draftalign` book (profile `{P.name}`, Chapter 4): the pretrained draft of Chapter 2 "
        f"fine-tuned with the `{loss}` loss on the target's answers in `{P.kd_data}` "
        f"({i['train_rows']} answers for training, {i['eval_rows']} held out).",
        "",
        f"- steps: {P.kd_steps} of {P.kd_batch} answers ({i['answer_tokens_seen']:,} answer tokens seen, "
        f"{r['train_seconds']:.0f} s of training steps)",
        f"- target distributions: {'the cached top-k of the data' if P.kd_target == 'cached' else 'online'}",
        f"- held-out agreement (top-1 with the target): {r['final_eval_top1']:.3f}; held-out TVD: "
        f"{r['final_eval_tvd']:.3f}",
        "",
        "Block efficiency per prompt category is measured in Chapter 4 of the book "
        "(`book/executed/04_tvdpp.ipynb`).",
    ]
    if isinstance(draft, SubVocabDraft):
        lines += ["", SUB_VOCAB_CARD_NOTE, "", f"The training form (the sub-vocabulary model and its map) is in "
                                              f"`{TRAINING_FORM}/`: `draftalign.subvocab.load_draft` loads it."]
    return "\n".join(lines)


def held_out_prompts(held_rows, per_category: int) -> list[dict]:
    """Up to ``per_category`` distinct prompts of each category among held-out rows (those
    of :func:`held_out_split`), chosen by a hash of the text (stable across runs), as dicts
    with ``id``, ``category``, ``prompt`` and ``prompt_ids``."""
    import hashlib
    from collections import defaultdict

    by_category = defaultdict(dict)
    for row in held_rows:
        by_category[row.get("category")].setdefault(row["prompt"], list(row["prompt_ids"]))
    chosen = []
    for cat in sorted(by_category, key=str):
        ranked = sorted(by_category[cat], key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
        chosen += [{"id": f"{cat}-{i}", "category": cat, "prompt": t, "prompt_ids": by_category[cat][t]}
                   for i, t in enumerate(ranked[:per_category])]
    return chosen


def report_prompts(data, P: Profile) -> dict[str, list[dict]]:
    """The prompts of Chapter 4's verdict: ``held-out`` (prompts of the distillation set no
    draft trained on, :func:`kd_split`, ``P.report_per_category`` per category: the same
    kind of prompt as the training data) and ``MT-Bench`` (first turns, a public set of
    another kind: the out-of-distribution check)."""
    _, held = kd_split(data, P)
    return {"held-out": held_out_prompts(held, P.report_per_category),
            "MT-Bench": load_prompts("mt_bench", limit_per_category=P.report_mt_bench_per_category)}


def report_answers(target, tokenizer, P: Profile, name: str, prompts: list[dict], *, progress: bool = True) -> list[dict]:
    """The target's answers to ``prompts`` at the profile's report temperatures
    (:func:`draftalign.evaluate.target_answers`), kept in ``runs/<profile>/answers-<name>/``
    and reused while the target, prompts and settings are the same."""
    import hashlib
    import json

    from .evaluate import target_answers

    folder = runs_dir(P) / f"answers-{name}"
    texts = [p["prompt"] for p in prompts]
    spec = {"stage": "report-answers", "target": target_id(target), "dtype": str(next(target.parameters()).dtype),
            "prompts_sha256": hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest(),
            "temperatures": list(P.report_temperatures), "max_new_tokens": P.report_max_new_tokens, "seeds": [P.seed]}
    path = folder / "answers.json"
    if is_complete(folder, spec) and path.exists():
        return json.loads(path.read_text())
    clear_finished(folder)
    start = time.perf_counter()
    answers = target_answers(target, prompts, temperatures=P.report_temperatures, tokenizer=tokenizer,
                             max_new_tokens=P.report_max_new_tokens, seeds=(P.seed,), progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(answers))
    write_manifest(folder, spec, inputs={"prompts": len(prompts)},
                   results={"answers": len(answers), "tokens": sum(len(a["tokens"]) for a in answers),
                            "seconds": time.perf_counter() - start})
    return answers
