"""Pack a reference run for the trip back from a lent GPU machine (tools, not the package).

    python tools/pack_reference.py --run runs/reference --out DIR [--budget-mib 62]

Writes DIR/reference-NN.part: one gzipped tar, cut into pieces, holding in this order (so
that a cut keeps what matters most): every small file of the run (manifests, histories,
plans, evaluation, the prompt pool), the answers as token ids (answers.npz, written here),
the best distilled draft, the pretrained draft, then the other drafts, each draft's
weights cast to bf16 (the form the project ships); tokenizer.json is left out (it is the
target's). Pieces past --budget-mib are kept in
--keep (for a later call) instead of DIR.
"""

import argparse
import io
import json
import lzma
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def answers_npz(run: Path) -> bytes:
    """Token ids of every answer (greedy and sampled), compact: the prompts are in the pool."""
    pool = [json.loads(line) for line in (run / "prompts" / "pool.jsonl").read_text().splitlines()]
    index = {p["prompt"]: i for i, p in enumerate(pool)}
    kind, prompt, finish, lengths, ids = [], [], [], [], []
    for k, name in enumerate(("greedy", "sampled")):
        for shard in sorted((run / f"answers-{name}").glob("shard-*")):
            path = shard / "records.jsonl"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind.append(k)
                prompt.append(index[r["prompt"]])
                finish.append(r["finish_reason"] == "stop")
                lengths.append(len(r["response_ids"]))
                ids.extend(r["response_ids"])
    buf = io.BytesIO()
    np.savez(buf, kind=np.array(kind, np.uint8), prompt=np.array(prompt, np.int32),
             finished=np.array(finish, bool), lengths=np.array(lengths, np.int32),
             ids=np.array(ids, np.uint16))
    return lzma.compress(buf.getvalue(), preset=6)


def bf16_copy(folder: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "tokenizer.json":
            shutil.copy2(f, dest / f.name)
        elif f.suffix == ".safetensors":
            state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(f).items()}
            save_file(state, dest / f.name, metadata={"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/reference")
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep", default="/tmp/reference-keep")
    ap.add_argument("--budget-mib", type=float, default=62)
    ap.add_argument("--piece-mib", type=float, default=15.5)
    args = ap.parse_args()
    run, out, keep = Path(args.run), Path(args.out), Path(args.keep)
    stage = keep / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    evaluation = json.loads((run / "evaluation.json").read_text()) if (run / "evaluation.json").exists() else {}
    best = evaluation.get("best")
    drafts = [d for d in [f"draft-{best}" if best else None, "draft-pretrained"] if d]
    drafts += sorted(p.name for p in run.glob("draft-*") if p.name not in drafts)
    for d in drafts:
        if (run / d / "model.safetensors").exists():
            bf16_copy(run / d, stage / d)
    (stage / "answers.npz.xz").write_bytes(answers_npz(run))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        small = [p for p in sorted(run.rglob("*")) if p.is_file() and "checkpoint" not in p.parts
                 and "corpus" not in p.parts and p.suffix != ".safetensors" and p.name != "tokenizer.json"
                 and (p.stat().st_size < 4e6 or p.name == "pool.jsonl")
                 and not (p.name == "records.jsonl" and "answers-" in str(p.parent.parent.name))]
        for p in small:
            tar.add(p, arcname=str(p.relative_to(run.parent)))
        tar.add(stage / "answers.npz.xz", arcname="reference/answers.npz.xz")
        for d in drafts:
            if (stage / d).exists():
                tar.add(stage / d, arcname=f"reference/{d}")
    data = buf.getvalue()
    piece = int(args.piece_mib * 2**20)
    out.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    sent = 0
    for n, start in enumerate(range(0, len(data), piece)):
        chunk = data[start:start + piece]
        fits = sent + len(chunk) <= args.budget_mib * 2**20
        (out if fits else keep).joinpath(f"reference-{n:02d}.part").write_bytes(chunk)
        sent += len(chunk) if fits else 0
        print(f"piece {n}: {len(chunk) / 2**20:.1f} MiB -> {'out' if fits else 'keep'}")
    print(f"packed {len(data) / 2**20:.1f} MiB; drafts in order: {drafts}")


if __name__ == "__main__":
    main()
